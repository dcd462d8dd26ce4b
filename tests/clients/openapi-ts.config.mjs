// @hey-api/openapi-ts settings for the generated TypeScript client. The test passes the served document's
// URL in JOBPIPE_OPENAPI_URL; the client lands in generated/typescript (ignored, made anew each run).
import { defineConfig } from '@hey-api/openapi-ts';

export default defineConfig({
  input: process.env.JOBPIPE_OPENAPI_URL,
  output: { path: 'generated/typescript', clean: true },
  plugins: ['@hey-api/client-fetch', '@hey-api/typescript', '@hey-api/sdk'],
  logs: { file: false },
});
