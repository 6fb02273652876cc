// Configuration of Scalar's API reference (read by its standalone bundle from the element
// #api-reference). A file, not an inline script, so the page keeps a strict script-src.
// Scalar still tries its own servers (fonts, its AI agent's registry) whatever it is told;
// the page's CSP refuses them, so nothing leaves the site and the page uses system fonts.
document.getElementById('api-reference').dataset.configuration = JSON.stringify({
  withDefaultFonts: false,
  hideClientButton: true,
  telemetry: false,
  agent: { disabled: true },
  mcp: { disabled: true },
})
