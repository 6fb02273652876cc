-- Refuses REST (JSON) request bodies that carry a field the call's message does not have:
-- the gRPC-JSON transcoder would drop it silently (a typo like "trialDay" would be ignored).
-- Rendered into the Envoy config by foretell.gateway, after the tables RULES (method, path
-- pattern, body message) and MESSAGES (message -> field -> true, or the field's message)
-- it generates from the contracts. Malformed JSON is left to the transcoder, which refuses it.

local function skip(s, i)
  return s:find("[^ \t\r\n]", i) or (#s + 1)
end

local function read_string(s, i)
  -- s:sub(i, i) is the opening quote; returns the raw text and the index after the closing one.
  local j = i + 1
  local parts = {}
  while true do
    local k = s:find('["\\]', j)
    if k == nil then
      return nil, nil
    end
    parts[#parts + 1] = s:sub(j, k - 1)
    if s:sub(k, k) == '"' then
      return table.concat(parts), k + 1
    end
    parts[#parts + 1] = s:sub(k, k + 1)
    j = k + 2
  end
end

local walk

local function walk_object(s, i, schema, path)
  i = skip(s, i + 1)
  if s:sub(i, i) == "}" then
    return i + 1
  end
  while true do
    if s:sub(i, i) ~= '"' then
      return nil
    end
    local key, after = read_string(s, i)
    if key == nil then
      return nil
    end
    i = skip(s, after)
    if s:sub(i, i) ~= ":" then
      return nil
    end
    local child = nil
    if schema ~= nil then
      local field = schema[key]
      if field == nil then
        error({ field = path .. key }, 0)
      end
      if field ~= true then
        child = MESSAGES[field]
      end
    end
    i = walk(s, skip(s, i + 1), child, path .. key .. ".")
    if i == nil then
      return nil
    end
    i = skip(s, i)
    local c = s:sub(i, i)
    if c == "}" then
      return i + 1
    elseif c ~= "," then
      return nil
    end
    i = skip(s, i + 1)
  end
end

local function walk_array(s, i, schema, path)
  i = skip(s, i + 1)
  if s:sub(i, i) == "]" then
    return i + 1
  end
  while true do
    i = walk(s, i, schema, path)
    if i == nil then
      return nil
    end
    i = skip(s, i)
    local c = s:sub(i, i)
    if c == "]" then
      return i + 1
    elseif c ~= "," then
      return nil
    end
    i = skip(s, i + 1)
  end
end

walk = function(s, i, schema, path)
  local c = s:sub(i, i)
  if c == "{" then
    return walk_object(s, i, schema, path)
  elseif c == "[" then
    return walk_array(s, i, schema, path)
  elseif c == '"' then
    local _, after = read_string(s, i)
    return after
  end
  local _, last = s:find("^[%w%.%+%-]+", i)
  if last == nil then
    return nil
  end
  return last + 1
end

local function body_message(method, path)
  path = path:gsub("%?.*$", "")
  for _, rule in ipairs(RULES) do
    if rule[1] == method and path:find(rule[2]) then
      return rule[3]
    end
  end
  return nil
end

local function refuse(handle, field)
  local message = "invalid request: unknown field '" .. field .. "' in the request body"
  local body = '{"code":3,"message":"' .. message .. '","details":['
    .. '{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":'
    .. '[{"field":"' .. field .. '","description":"no such field"}]}]}'
  handle:respond({ [":status"] = "400", ["content-type"] = "application/json" }, body)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local path = headers:get(":path") or ""
  if path:sub(1, 4) ~= "/v1/" then
    return
  end
  local message = body_message(headers:get(":method") or "", path)
  if message == nil then
    return
  end
  local buffered = handle:body()
  if buffered == nil then
    return
  end
  local text = buffered:getBytes(0, buffered:length())
  local ok, err = pcall(walk, text, skip(text, 1), MESSAGES[message], "")
  if not ok then
    if type(err) == "table" and err.field ~= nil and err.field:find('^[%w_%.%[%]]+$') then
      refuse(handle, err.field)
    else
      refuse(handle, "request")
    end
  end
end
