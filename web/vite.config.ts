import { copyFileSync, mkdirSync } from 'node:fs'
import { fileURLToPath, URL } from 'node:url'
import vue from '@vitejs/plugin-vue'
import type { Plugin } from 'vite'
import { defineConfig } from 'vitest/config'

// The API reference renderer is a prebuilt bundle from npm: copied next to its page, not
// bundled into the app (the app never loads it).
function apiReference(): Plugin {
  return {
    name: 'foretell-api-reference',
    apply: 'build',
    writeBundle(options) {
      const dir = `${options.dir ?? 'dist'}/docs/api`
      mkdirSync(dir, { recursive: true })
      copyFileSync(
        fileURLToPath(
          new URL('./node_modules/@scalar/api-reference/dist/browser/standalone.js', import.meta.url),
        ),
        `${dir}/scalar.js`,
      )
    },
  }
}

export default defineConfig({
  plugins: [vue(), apiReference()],
  resolve: { alias: { '@': fileURLToPath(new URL('./src', import.meta.url)) } },
  build: { target: 'es2022', sourcemap: false, reportCompressedSize: false },
  server: { proxy: { '/v1': process.env.FORETELL_URL ?? 'http://127.0.0.1:8080' } },
  test: { environment: 'jsdom', include: ['src/**/__tests__/*.test.ts'] },
})
