// jobpipe's web UI: sign in, submit jobs (one, or many as a batch), and watch them live over the
// WebSocket, falling back to polling GET /jobs/{id} (GET /batches/{id}) with backoff while the socket is
// down. A batch shows as one row with its progress. Plain ES module, no build step.

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
// What the owner may still cancel: jobs that have not started.
const CANCELLABLE = new Set(["scheduled", "queued"]);
const STORAGE_KEY = "jobpipe.session";
// Polling paces. FAST while the socket is down. SLOW while a job is followed over the socket: its first
// read confirms the state a subscription answered (the notifier finds subscribers through an eventually
// consistent index, so a change just after subscribing may never be pushed), later ones make sure a
// missed push never leaves a job waiting forever.
const FAST_POLL = { first: 1000, max: 15000 };
const SLOW_POLL = { first: 2000, max: 60000 };

const $ = (id) => document.getElementById(id);

/** Forms per known kind: a field list turned into inputs; unknown kinds get a JSON editor. */
const KIND_FORMS = {
  echo: [
    { name: "message", label: "Message", type: "text", value: "hello" },
    { name: "sleepMs", label: "Work for (ms)", type: "number", min: 0, max: 900000, value: 1500 },
    { name: "failTimes", label: "Fail retryably this many times", type: "number", min: 0, max: 100, value: 0 },
    { name: "failPermanently", label: "Fail permanently", type: "checkbox" },
  ],
  image: [
    { name: "prompt", label: "Prompt", type: "textarea", required: true, maxlength: 1024 },
    { name: "negativePrompt", label: "Avoid (negative prompt)", type: "text" },
    { name: "width", label: "Width", type: "number", min: 320, max: 4096, step: 16, value: 1280 },
    { name: "height", label: "Height", type: "number", min: 320, max: 4096, step: 16, value: 720 },
    { name: "quality", label: "Quality", type: "select", options: ["standard", "premium"] },
  ],
  "wifi-qr": [
    { name: "ssid", label: "Network name (SSID)", type: "text", required: true },
    { name: "password", label: "Password", type: "text" },
    { name: "encryption", label: "Encryption", type: "select", options: ["WPA", "WEP", "nopass"] },
    { name: "hidden", label: "Hidden network", type: "checkbox" },
  ],
};

const state = {
  session: null, // { apiUrl, wsUrl, token, sub }
  jobs: new Map(), // jobId -> job view (or push message merged in)
  batches: new Map(), // batchId -> { batchId, total, counts, done, completedAt }
  socket: null,
  socketBackoff: 1000,
  polling: new Map(), // jobId -> { timer, delay }
  local: false,
};

// ---- API ------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error;
    super(error ? error.message : `request failed (${status})`);
    this.status = status;
    this.code = error ? error.code : "http_error";
    this.field = error ? error.field : undefined;
  }
}

async function api(path, options = {}) {
  const response = await fetch(state.session.apiUrl + path, {
    ...options,
    headers: {
      authorization: `Bearer ${state.session.token}`,
      ...(options.body ? { "content-type": "application/json" } : {}),
      ...(options.headers || {}),
    },
  });
  const text = await response.text();
  const body = text ? safeJson(text) : null;
  if (!response.ok) {
    if (response.status === 401) {
      signOut("Your session expired or the token was rejected. Sign in again.");
    }
    throw new ApiError(response.status, body);
  }
  return body;
}

function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

// ---- Session --------------------------------------------------------------------------------------

async function start() {
  // The local stack serves /dev/resources; a deployed frontend does not have it.
  try {
    const response = await fetch("/dev/resources");
    state.local = response.ok;
  } catch {
    state.local = false;
  }
  $("dev-sign-in").hidden = !state.local;
  $("token-sign-in").hidden = state.local;
  $("sign-out").addEventListener("click", () => signOut());
  $("refresh").addEventListener("click", () => loadJobs());
  $("dev-sign-in").addEventListener("submit", devSignIn);
  $("token-sign-in").addEventListener("submit", tokenSignIn);
  $("job-form").addEventListener("submit", submitJob);
  $("kind").addEventListener("change", () => renderKindFields($("kind").value));

  const saved = safeJson(localStorage.getItem(STORAGE_KEY) || "null");
  if (saved && saved.token) {
    await enter(saved);
  } else {
    showSignIn();
  }
}

function showSignIn(message = "") {
  $("sign-in").hidden = false;
  $("submit").hidden = true;
  $("jobs-section").hidden = true;
  $("session").hidden = true;
  $("sign-in-error").textContent = message;
}

async function devSignIn(event) {
  event.preventDefault();
  const sub = new FormData(event.target).get("sub").trim();
  try {
    const response = await fetch("/dev/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ sub }),
    });
    const body = await response.json();
    if (!response.ok) throw new ApiError(response.status, body);
    const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    await enter({ apiUrl: "", wsUrl, token: body.token, sub });
  } catch (error) {
    $("sign-in-error").textContent = `Could not sign in: ${error.message}`;
  }
}

async function tokenSignIn(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const token = form.get("token").trim();
  await enter({
    apiUrl: form.get("apiUrl").trim().replace(/\/$/, ""),
    wsUrl: form.get("wsUrl").trim(),
    token,
    sub: subjectOf(token) || "you",
  });
}

/** The `sub` claim of a JWT, for display only (the server verifies the token). */
function subjectOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub;
  } catch {
    return null;
  }
}

async function enter(session) {
  state.session = session;
  localStorage.setItem(STORAGE_KEY, JSON.stringify(session));
  $("who").textContent = session.sub;
  $("sign-in").hidden = true;
  $("session").hidden = false;
  $("submit").hidden = false;
  $("jobs-section").hidden = false;
  try {
    await loadKinds();
    await loadJobs();
    connectSocket();
  } catch (error) {
    if (state.session) $("submit-error").textContent = error.message;
  }
}

function signOut(message = "") {
  localStorage.removeItem(STORAGE_KEY);
  state.session = null;
  if (state.socket) {
    state.socket.onclose = null;
    state.socket.close();
    state.socket = null;
  }
  for (const { timer } of state.polling.values()) clearTimeout(timer);
  state.polling.clear();
  state.jobs.clear();
  state.batches.clear();
  $("jobs").replaceChildren();
  setLive("offline");
  showSignIn(message);
}

// ---- Kinds and the submit form --------------------------------------------------------------------

async function loadKinds() {
  const { kinds, paused = [] } = await api("/kinds");
  const select = $("kind");
  // A paused kind still takes jobs; they wait until an operator resumes it.
  select.replaceChildren(...kinds.map((kind) => new Option(paused.includes(kind) ? `${kind} (paused: jobs wait)` : kind, kind)));
  if (kinds.length === 0) {
    $("submit-error").textContent = "This deployment offers no job kinds.";
    $("submit-button").disabled = true;
    return;
  }
  renderKindFields(select.value);
}

function renderKindFields(kind) {
  const container = $("kind-fields");
  const fields = KIND_FORMS[kind];
  if (!fields) {
    container.replaceChildren(labelled("Input (JSON object)", Object.assign(document.createElement("textarea"), {
      name: "json", rows: 5, value: "{}", spellcheck: false,
    })));
    return;
  }
  const row = document.createElement("div");
  row.className = "row";
  for (const field of fields) {
    row.append(fieldInput(field));
  }
  container.replaceChildren(row);
}

function fieldInput(field) {
  let input;
  if (field.type === "textarea") {
    input = Object.assign(document.createElement("textarea"), { rows: 3 });
  } else if (field.type === "select") {
    input = document.createElement("select");
    input.append(...field.options.map((o) => new Option(o, o)));
  } else {
    input = Object.assign(document.createElement("input"), { type: field.type });
  }
  input.name = field.name;
  for (const attribute of ["min", "max", "step", "maxlength", "required"]) {
    if (field[attribute] !== undefined) input[attribute === "maxlength" ? "maxLength" : attribute] = field[attribute];
  }
  if (field.value !== undefined) input.value = field.value;
  if (field.type === "checkbox") {
    const label = labelled(field.label, input);
    label.className = "inline";
    return label;
  }
  if (field.type === "textarea") return Object.assign(labelled(field.label, input), { style: "grid-column: 1 / -1" });
  return labelled(field.label, input);
}

function labelled(text, input) {
  const label = document.createElement("label");
  label.append(text, input);
  return label;
}

function formInput(kind, form) {
  const fields = KIND_FORMS[kind];
  if (!fields) {
    const parsed = safeJson(form.elements.json.value);
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("The input must be a JSON object.");
    return parsed;
  }
  const input = {};
  for (const field of fields) {
    const element = form.elements[field.name];
    if (field.type === "checkbox") {
      if (element.checked) input[field.name] = true;
    } else if (field.type === "number") {
      if (element.value !== "") input[field.name] = Number(element.value);
    } else if (element.value !== "") {
      input[field.name] = element.value;
    }
  }
  return input;
}

async function submitJob(event) {
  event.preventDefault();
  const form = event.target;
  const kind = $("kind").value;
  const button = $("submit-button");
  $("submit-error").textContent = "";
  button.disabled = true;
  try {
    const input = formInput(kind, form);
    const submission = { kind, input };
    const runAt = startTime(form.elements.runAt.value);
    if (runAt) submission.runAt = runAt;
    const copies = Number(form.elements.copies.value || 1);
    if (!Number.isInteger(copies) || copies < 1 || copies > 100) throw new Error("How many must be a whole number from 1 to 100.");
    const headers = { "idempotency-key": crypto.randomUUID() };
    if (copies > 1) {
      const batch = await api("/batches", { method: "POST", body: JSON.stringify({ jobs: Array(copies).fill(submission) }), headers });
      upsertBatch(batch);
      followBatch(batch.batchId);
      return;
    }
    const job = await api("/jobs", { method: "POST", body: JSON.stringify(submission), headers });
    upsert(job);
    follow(job.jobId);
  } catch (error) {
    $("submit-error").textContent = describeError(error);
  } finally {
    button.disabled = false;
  }
}

/** The `runAt` of a `datetime-local` value (the person's own time zone), or null for "now". */
function startTime(value) {
  if (!value) return null;
  const at = new Date(value);
  if (Number.isNaN(at.getTime())) throw new Error("The start time is not a date and time.");
  return at.toISOString();
}

function describeError(error) {
  if (error instanceof ApiError && error.field) return `${error.message} (${error.field})`;
  return error.message;
}

// ---- Jobs list ------------------------------------------------------------------------------------

async function loadJobs() {
  const { jobs } = await api("/jobs?limit=50");
  state.jobs.clear();
  state.batches.clear();
  $("jobs").replaceChildren();
  for (const job of jobs.reverse()) upsert(job);
  for (const job of jobs) if (!job.batchId && !TERMINAL.has(job.status)) follow(job.jobId);
  // A batch's jobs show as the batch's one row: read each batch once, and follow those still running.
  for (const batchId of new Set(jobs.map((job) => job.batchId).filter(Boolean))) {
    api(`/batches/${batchId}?limit=1`).then((batch) => {
      upsertBatch(batch);
      if (!batch.completedAt) followBatch(batchId);
    }).catch(() => {});
  }
}

/** Whether `update` is older than the job's state already held: pushes can arrive out of order and a
 * read can race a push (compared by `updatedAt`), and a job that ended never goes back. */
function isStale(previous, update) {
  if (!previous.status) return false;
  if (TERMINAL.has(previous.status) && update.status && !TERMINAL.has(update.status)) return true;
  const held = Date.parse(previous.updatedAt);
  const incoming = Date.parse(update.updatedAt);
  return Number.isFinite(held) && Number.isFinite(incoming) && incoming < held;
}

function upsert(update) {
  if (update.batchId) {
    // Shown as its batch's row, which holds its counts.
    if (!state.batches.has(update.batchId)) renderBatch({ batchId: update.batchId, total: 0, counts: {}, done: false });
    return;
  }
  const previous = state.jobs.get(update.jobId) || {};
  if (isStale(previous, update)) {
    console.debug(`ignored an update of job ${update.jobId} older than the one shown`);
    return;
  }
  const job = { ...previous, ...update };
  state.jobs.set(job.jobId, job);
  render(job);
  $("empty").hidden = state.jobs.size > 0;
  if (TERMINAL.has(job.status)) {
    stopPolling(job.jobId);
    // A push leaves out large results and the short-lived links to result files; fetch the job once.
    const needsFetch = job.result == null || (typeof job.result === "object" && job.result.key && !job.result.url);
    if (job.status === "completed" && needsFetch && !job.fetchedFinal) {
      job.fetchedFinal = true;
      api(`/jobs/${job.jobId}`).then((full) => upsert({ ...full, fetchedFinal: true })).catch(() => {});
    }
  }
}

function render(job) {
  const item = row(job.jobId, () => cancel(job.jobId));
  item.dataset.status = job.status;
  if (job.kind) item.querySelector(".kind").textContent = job.kind;
  item.querySelector(".id").textContent = job.jobId;
  const status = item.querySelector(".status");
  status.textContent = job.status;
  status.dataset.status = job.status;
  const progress = job.status === "completed" ? 100 : job.progress || 0;
  const bar = item.querySelector(".progress");
  bar.setAttribute("aria-valuenow", String(progress));
  bar.firstElementChild.style.width = `${progress}%`;
  item.querySelector(".meta").textContent = meta(job);
  item.querySelector(".error-text").textContent = job.error ? errorInWords(job.error) : "";
  item.querySelector(".job-actions").hidden = !CANCELLABLE.has(job.status);
  renderResult(item.querySelector(".result"), job);
}

/** The list's row for a job or batch id, made (at the top) the first time. */
function row(id, onCancel) {
  let item = document.querySelector(`.job[data-id="${id}"]`);
  if (!item) {
    item = $("job-template").content.firstElementChild.cloneNode(true);
    item.dataset.id = id;
    item.querySelector(".cancel").addEventListener("click", onCancel);
    $("jobs").prepend(item);
    $("empty").hidden = true;
  }
  return item;
}

// ---- Batches: one row each ------------------------------------------------------------------------

/** How many of a batch's jobs ended, from a read's counts or a push's. */
function endedOf(batch) {
  const counts = batch.counts || {};
  return (counts.completed || 0) + (counts.failed || 0) + (counts.cancelled || 0);
}

/** Merges a batch's read (GET /batches) or push; an older state (fewer jobs ended, or not yet completed)
 * never replaces a newer. A batch is finished once its completion is recorded (`completedAt`): a read can
 * say every job ended (`done`) a moment before. */
function upsertBatch(update) {
  const previous = state.batches.get(update.batchId);
  if (previous && (previous.completedAt && !update.completedAt || endedOf(update) < endedOf(previous))) {
    console.debug(`ignored an update of batch ${update.batchId} older than the one shown`);
    return;
  }
  // A read counts every status; a push only how jobs ended (`counts.waiting` is then unknown).
  const batch = { ...previous, ...update, error: "" };
  state.batches.set(batch.batchId, batch);
  renderBatch(batch);
  if (batch.completedAt) stopPolling(`batch:${batch.batchId}`);
}

function renderBatch(batch) {
  const item = row(batch.batchId, () => cancelBatch(batch.batchId));
  item.classList.add("batch");
  const ended = endedOf(batch);
  const finished = Boolean(batch.completedAt);
  const status = finished ? "completed" : "processing";
  item.dataset.status = status;
  item.querySelector(".kind").textContent = batch.total ? `batch of ${batch.total}` : "batch";
  item.querySelector(".id").textContent = batch.batchId;
  const label = item.querySelector(".status");
  label.textContent = finished ? "done" : `${ended}/${batch.total || "?"} ended`;
  label.dataset.status = status;
  const progress = batch.total ? Math.round((100 * ended) / batch.total) : 0;
  const bar = item.querySelector(".progress");
  bar.setAttribute("aria-valuenow", String(progress));
  bar.firstElementChild.style.width = `${progress}%`;
  const counts = batch.counts || {};
  const read = "queued" in counts;
  const parts = ["completed", "failed", "cancelled", ...(read ? ["processing", "queued", "scheduled"] : [])]
    .filter((name) => counts[name]).map((name) => `${counts[name]} ${name}`);
  if (!read && batch.total > ended) parts.push(`${batch.total - ended} to go`);
  if (batch.completedAt) parts.push(`done ${when(batch.completedAt)}`);
  item.querySelector(".meta").textContent = parts.join(" · ");
  item.querySelector(".error-text").textContent = batch.error || "";
  // Cancel stops the jobs that have not started; after a push, which does not say, it is offered until done.
  item.querySelector(".job-actions").hidden = finished || (read && !(counts.scheduled + counts.queued));
  item.querySelector(".result").replaceChildren();
}

async function cancelBatch(batchId) {
  try {
    upsertBatch(await api(`/batches/${batchId}?limit=1`, { method: "DELETE" }));
  } catch (error) {
    const batch = state.batches.get(batchId);
    if (batch) renderBatch({ ...batch, error: `Could not cancel: ${error.message}` });
  }
}

function followBatch(batchId) {
  const read = () => api(`/batches/${batchId}?limit=1`).then(upsertBatch);
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify({ action: "subscribe", batchId }));
    startPolling(`batch:${batchId}`, SLOW_POLL, read);
  } else {
    startPolling(`batch:${batchId}`, FAST_POLL, read);
  }
}

function meta(job) {
  const parts = [];
  if (job.createdAt) parts.push(`submitted ${new Date(job.createdAt).toLocaleTimeString()}`);
  if (job.runAt) parts.push(`${job.status === "scheduled" ? "starts" : "scheduled for"} ${when(job.runAt)}`);
  if (job.attempts > 1) parts.push(`attempt ${job.attempts}`);
  if (job.durationMs != null) parts.push(`took ${(job.durationMs / 1000).toFixed(1)} s`);
  else if (job.status === "processing" && job.progress) parts.push(`${job.progress}%`);
  return parts.join(" · ");
}

/** A time as a person reads it: the time alone today, with the date otherwise. */
function when(iso) {
  const at = new Date(iso);
  const today = at.toDateString() === new Date().toDateString();
  return today ? at.toLocaleTimeString() : at.toLocaleString();
}

function errorInWords(error) {
  const reasons = {
    dead_lettered: "The job could not be delivered to a worker and was given up.",
    max_attempts_exceeded: "Workers kept stopping before the job finished; it was given up.",
    deadline_exceeded: "The job ran out of time.",
  };
  return reasons[error.code] || error.message || error.code;
}

function renderResult(container, job) {
  if (job.status !== "completed" || job.result == null) {
    container.replaceChildren();
    return;
  }
  const result = job.result;
  if (result && typeof result === "object" && result.key && !result.url) {
    container.replaceChildren();
    return; // the link is on its way (GET /jobs/{id})
  }
  if (result && typeof result === "object" && typeof result.url === "string" && /image|png|qr/i.test(`${result.contentType || ""} ${job.kind}`)) {
    const image = Object.assign(document.createElement("img"), { src: result.url, alt: `result of ${job.kind} job` });
    container.replaceChildren(image);
    return;
  }
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(result, null, 2);
  container.replaceChildren(pre);
}

async function cancel(jobId) {
  try {
    upsert(await api(`/jobs/${jobId}`, { method: "DELETE" }));
  } catch (error) {
    const job = state.jobs.get(jobId);
    if (job) {
      render({ ...job, error: { code: error.code, message: `Could not cancel: ${error.message}` } });
    }
  }
}

// ---- Live status: WebSocket first, polling with backoff while it is down ---------------------------

function follow(jobId) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify({ action: "subscribe", jobId }));
    // Also the slow poll, so a subscription that fails or a push that never comes cannot strand the job.
    startPolling(jobId, SLOW_POLL);
  } else {
    startPolling(jobId, FAST_POLL);
  }
}

function connectSocket() {
  if (!state.session) return;
  const url = `${state.session.wsUrl}?token=${encodeURIComponent(state.session.token)}`;
  let socket;
  try {
    socket = new WebSocket(url);
  } catch {
    scheduleReconnect();
    return;
  }
  state.socket = socket;
  socket.onopen = () => {
    state.socketBackoff = 1000;
    setLive("live");
    for (const job of state.jobs.values()) {
      if (!TERMINAL.has(job.status)) follow(job.jobId);
    }
    for (const batch of state.batches.values()) if (!batch.completedAt) followBatch(batch.batchId);
  };
  socket.onmessage = (event) => {
    const message = safeJson(event.data);
    if (!message) return;
    if (message.type === "job") upsert(message);
    else if (message.type === "batch") upsertBatch(message);
    else if (message.type === "subscribed" && message.batch) upsertBatch(message.batch);
    else if (message.type === "subscribed" && message.job) {
      upsert(message.job);
      // Confirm a state that has not ended with a read made once the subscription surely exists.
      if (!TERMINAL.has(message.job.status)) {
        stopPolling(message.jobId);
        startPolling(message.jobId, SLOW_POLL);
      }
    }
  };
  socket.onclose = () => {
    if (state.socket !== socket) return;
    state.socket = null;
    setLive("polling");
    for (const job of state.jobs.values()) if (!TERMINAL.has(job.status)) startPolling(job.jobId, FAST_POLL);
    for (const batch of state.batches.values()) if (!batch.completedAt) followBatch(batch.batchId);
    scheduleReconnect();
  };
}

function scheduleReconnect() {
  const delay = state.socketBackoff;
  state.socketBackoff = Math.min(state.socketBackoff * 2, 30000);
  setTimeout(connectSocket, delay + Math.random() * 250);
}

/** Reads `key` (a job id, or `batch:<id>` with its own `read`) with backoff until stopped. */
function startPolling(key, pace, read = async () => upsert(await api(`/jobs/${key}`))) {
  const existing = state.polling.get(key);
  if (existing && existing.pace === pace) return;
  if (existing) clearTimeout(existing.timer);
  const entry = { delay: pace.first, timer: null, pace };
  state.polling.set(key, entry);
  const poll = async () => {
    if (state.polling.get(key) !== entry || !state.session) return;
    try {
      await read();
    } catch {
      // Keep trying with backoff; an expired session signs out in api().
    }
    if (state.polling.get(key) !== entry) return;
    entry.delay = Math.min(entry.delay * 2, pace.max);
    entry.timer = setTimeout(poll, entry.delay);
  };
  entry.timer = setTimeout(poll, entry.delay);
  if (!state.socket) setLive("polling");
}

function stopPolling(jobId) {
  const entry = state.polling.get(jobId);
  if (entry) {
    clearTimeout(entry.timer);
    state.polling.delete(jobId);
  }
}

function setLive(mode) {
  const live = $("live");
  live.dataset.mode = mode;
  live.textContent = { live: "live", polling: "polling", offline: "offline" }[mode];
}

start();
