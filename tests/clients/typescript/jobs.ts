// Submits, reads and lists jobs through the TypeScript client @hey-api/openapi-ts generated from the
// served /openapi.json, using the models by the names the document gives them. Prints one JSON line for
// the Rust test to check: `node jobs.js BASE_URL TOKEN`.
import { createClient } from '../generated/typescript/client';
import {
  getJob,
  listJobs,
  submitJob,
  type EchoInput,
  type JobStatus,
  type JobView,
  type SubmitEchoJob,
  type SubmitJob,
  type SubmitWifiQrJob,
  type WifiQrInput,
} from '../generated/typescript';

// Node's globals, without @types/node.
declare const process: { argv: string[]; exitCode?: number };

const [baseUrl, token] = process.argv.slice(2);
const client = createClient({ baseUrl, auth: token });

const terminal: JobStatus[] = ['completed', 'failed', 'cancelled'];

async function submit(body: SubmitJob): Promise<JobView> {
  const { data, error, response } = await submitJob({ client, body });
  if (!data) throw new Error(`submitJob answered ${response.status}: ${JSON.stringify(error)}`);
  return data;
}

/** Reads the job until it has ended (a bounded number of reads, not a deadline). */
async function untilTerminal(jobId: string): Promise<JobView> {
  for (let read = 0; read < 600; read++) {
    const { data, error, response } = await getJob({ client, path: { jobId } });
    if (!data) throw new Error(`getJob answered ${response.status}: ${JSON.stringify(error)}`);
    if (terminal.includes(data.status)) return data;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`job ${jobId} did not end`);
}

async function main() {
  const echoInput: EchoInput = { sleepMs: 10, failTimes: 0 };
  const echo: SubmitEchoJob = { kind: 'echo', input: echoInput };
  const wifiInput: WifiQrInput = { ssid: 'jobpipe-ts', password: 'correct horse', encryption: 'WPA' };
  const wifi: SubmitWifiQrJob = { kind: 'wifi-qr', input: wifiInput };
  const submitted = [await submit(echo), await submit(wifi)];
  const ended = [];
  for (const job of submitted) ended.push(await untilTerminal(job.jobId));

  const page = await listJobs({ client, query: { limit: 100, status: 'completed' } });
  if (!page.data) throw new Error(`listJobs answered ${page.response.status}: ${JSON.stringify(page.error)}`);

  const missing = await getJob({ client, path: { jobId: '00000000-0000-4000-8000-000000000000' } });
  const report = {
    jobs: ended.map((job) => ({ jobId: job.jobId, kind: job.kind, status: job.status, completedAt: job.completedAt })),
    listed: page.data.jobs.map((job) => job.jobId),
    // A 404 is the API's error shape; a 401 may be API Gateway's own (`{message}`), hence the narrowing.
    missing: {
      status: missing.response.status,
      code: missing.error && 'error' in missing.error ? missing.error.error.code : undefined,
    },
  };
  console.log(JSON.stringify(report));
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
