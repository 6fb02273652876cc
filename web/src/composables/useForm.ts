// Submitting a form: pending state, the server's field messages by field, a general message.
import { reactive, ref } from 'vue'
import { ApiError, messageOf } from '../api/errors'

export function useForm() {
  const pending = ref(false)
  const message = ref('')
  const fields = reactive<Record<string, string>>({})

  async function submit(action: () => Promise<void>): Promise<void> {
    pending.value = true
    message.value = ''
    for (const key of Object.keys(fields)) delete fields[key]
    try {
      await action()
    } catch (error) {
      if (error instanceof ApiError) Object.assign(fields, error.fields)
      message.value = Object.keys(fields).length ? 'Please correct the fields marked below.' : messageOf(error)
    } finally {
      pending.value = false
    }
  }
  return { pending, message, fields, submit }
}
