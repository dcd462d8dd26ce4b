"""Submits, reads and lists jobs through the Python client openapi-python-client generated from the served
/openapi.json, using the models by the names the document gives them. Prints one JSON line for the Rust
test to check: `python jobs.py BASE_URL TOKEN`, with the generated package on PYTHONPATH."""

import importlib
import json
import pkgutil
import sys
import time

import jobpipe_client
from jobpipe_client import AuthenticatedClient
from jobpipe_client.api.jobs import get_job, list_jobs, submit_job
from jobpipe_client.models import (
    EchoInput,
    ErrorBody,
    JobPage,
    JobStatus,
    JobView,
    SubmitEchoJob,
    SubmitWifiQrJob,
    WifiQrInput,
)

# Every module of the client imports: a model that an operation imports but the generator dropped fails here.
for module in pkgutil.walk_packages(jobpipe_client.__path__, "jobpipe_client."):
    importlib.import_module(module.name)

TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}


def submit(client: AuthenticatedClient, body: SubmitEchoJob | SubmitWifiQrJob) -> JobView:
    answer = submit_job.sync_detailed(client=client, body=body)
    if not isinstance(answer.parsed, JobView):
        raise RuntimeError(f"submitJob answered {answer.status_code}: {answer.content!r}")
    return answer.parsed


def until_terminal(client: AuthenticatedClient, job_id: str) -> JobView:
    """Reads the job until it has ended (a bounded number of reads, not a deadline)."""
    for _ in range(600):
        job = get_job.sync(job_id, client=client)
        if not isinstance(job, JobView):
            raise RuntimeError(f"getJob answered {job!r}")
        if job.status in TERMINAL:
            return job
        time.sleep(0.1)
    raise RuntimeError(f"job {job_id} did not end")


def main(base_url: str, token: str) -> None:
    with AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True) as client:
        echo = SubmitEchoJob(kind="echo", input_=EchoInput(sleep_ms=10, fail_times=0))
        wifi = SubmitWifiQrJob(kind="wifi-qr", input_=WifiQrInput(ssid="jobpipe-py", password="correct horse"))
        submitted = [submit(client, echo), submit(client, wifi)]
        ended = [until_terminal(client, str(job.job_id)) for job in submitted]

        page = list_jobs.sync(client=client, limit=100, status=JobStatus.COMPLETED)
        if not isinstance(page, JobPage):
            raise RuntimeError(f"listJobs answered {page!r}")

        missing = get_job.sync_detailed("00000000-0000-4000-8000-000000000000", client=client)
        if not isinstance(missing.parsed, ErrorBody):
            raise RuntimeError(f"getJob of a missing job answered {missing.status_code}: {missing.content!r}")

    report = {
        "jobs": [
            {
                "jobId": str(job.job_id),
                "kind": job.kind,
                "status": job.status.value,
                "completedAt": job.completed_at.isoformat() if job.completed_at else None,
            }
            for job in ended
        ],
        "listed": [str(job.job_id) for job in page.jobs],
        "missing": {"status": int(missing.status_code), "code": missing.parsed.error.code},
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:3])
