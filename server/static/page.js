"use strict";
// The tokfilter inspection page. Each document is sent once to POST v1/filter with "tokens": true;
// spans at any threshold are then derived here with the server's rule (tokfilter/windows.py:
// char_probabilities, spans_from_char_probs), so the slider re-colours without a new request.
// Offsets are code points: texts are handled as arrays of code points (Array.from), never as
// UTF-16 string indices.

const MAX_DOCUMENTS = 200; // documents of one JSONL file that are shown
const CONCURRENCY = 4; // requests in flight to the gateway
const HIDDEN = "[hidden]";

let apiKey = null; // kept in memory only
let keyPrompt = null; // the open key prompt, shared by the requests waiting for it
let threshold = null; // null until the first answer gives the model's threshold
let mode = "spans";
let documents = []; // {id, text, chars, card, result?, error?}

const $ = (id) => document.getElementById(id);

function showError(message) {
  const div = document.createElement("div");
  div.className = "error";
  div.textContent = message;
  $("messages").appendChild(div);
}

window.addEventListener("error", (event) => showError(`page error: ${event.message}`));
window.addEventListener("unhandledrejection", (event) => showError(`page error: ${event.reason}`));

// ------------------------------------------------------------------------------------ API key

function askKey(reason) {
  if (keyPrompt === null) {
    keyPrompt = new Promise((resolve, reject) => {
      const dialog = $("key-dialog");
      $("key-reason").textContent = reason;
      $("api-key").value = "";
      $("key-form").onsubmit = (event) => {
        event.preventDefault();
        apiKey = $("api-key").value;
        keyPrompt = null;
        dialog.close();
        resolve();
      };
      dialog.oncancel = () => {
        keyPrompt = null;
        reject(new Error("the gateway needs an API key and none was given"));
      };
      dialog.showModal();
      $("api-key").focus();
    });
  }
  return keyPrompt;
}

async function filterDocument(doc) {
  const body = JSON.stringify({ documents: [{ id: doc.id, text: doc.text }], tokens: true });
  for (;;) {
    const usedKey = apiKey;
    const headers = { "Content-Type": "application/json" };
    if (usedKey !== null) headers.Authorization = `Bearer ${usedKey}`;
    let response;
    try {
      response = await fetch("v1/filter", { method: "POST", headers, body });
    } catch (err) {
      throw new Error(`could not reach the gateway (${err.message})`);
    }
    const payload = await response.json().catch(() => null);
    const message = payload && payload.error ? payload.error : response.statusText;
    if (response.status === 401) {
      if (apiKey === usedKey) {
        // ask only when no newer key exists than the one refused
        await askKey(usedKey === null ? `The gateway asks for an API key: ${message}` : `The gateway refused that key: ${message}`);
      }
      continue;
    }
    if (!response.ok || payload === null) throw new Error(`the gateway answered ${response.status}: ${message}`);
    return payload;
  }
}

// ------------------------------------------------------------------------------- span rule

// Per-character probabilities (float32, as on the server): a character inside a token takes the
// token's probability (the highest where tokens overlap); a character between tokens the lower of
// its nearest covered neighbours; characters before the first or after the last token 0.
function charProbabilities(nChars, offsets, probs) {
  const p = new Float32Array(nChars).fill(-1);
  const tokenAt = new Int32Array(nChars).fill(-1);
  offsets.forEach(([start, end], t) => {
    for (let c = Math.max(start, 0); c < Math.min(end, nChars); c++) {
      if (probs[t] > p[c]) p[c] = probs[t];
      tokenAt[c] = t;
    }
  });
  const prev = new Float32Array(nChars).fill(-1);
  let last = -1;
  for (let c = 0; c < nChars; c++) {
    if (p[c] >= 0) last = p[c];
    prev[c] = last;
  }
  let next = -1;
  for (let c = nChars - 1; c >= 0; c--) {
    if (p[c] >= 0) next = p[c];
    else p[c] = prev[c] >= 0 && next >= 0 ? Math.min(prev[c], next) : 0;
  }
  return { probs: p, tokenAt };
}

// Maximal runs of characters with probability >= threshold, compared in float32 as on the server.
function spansAt(charProbs, value) {
  const t = Math.fround(value);
  const spans = [];
  let start = -1;
  for (let c = 0; c <= charProbs.length; c++) {
    const flagged = c < charProbs.length && charProbs[c] >= t;
    if (flagged && start < 0) start = c;
    if (!flagged && start >= 0) {
      spans.push([start, c]);
      start = -1;
    }
  }
  return spans;
}

function flaggedTokens(probs, value) {
  const t = Math.fround(value);
  return probs.filter((p) => Math.fround(p) >= t).length;
}

// ----------------------------------------------------------------------------------- render

function heat(p) {
  return `rgba(240, 110, 20, ${(0.7 * Math.max(0, p)).toFixed(3)})`;
}

// Characters [a, b) as one element per run of characters of the same token (or gap).
function appendRuns(parent, doc, a, b) {
  let c = a;
  while (c < b) {
    const token = doc.tokenAt[c];
    let end = c + 1;
    while (end < b && doc.tokenAt[end] === token) end++;
    const run = document.createElement("span");
    run.className = "tok";
    run.style.backgroundColor = heat(doc.charProbs[c]);
    if (token >= 0) run.title = `p = ${doc.result.tokens.probs[token].toFixed(3)}`;
    run.textContent = doc.chars.slice(c, end).join("");
    parent.appendChild(run);
    c = end;
  }
}

function renderText(doc, spans) {
  const text = document.createElement("div");
  text.className = "text";
  let pos = 0;
  for (const [start, end] of spans) {
    appendRuns(text, doc, pos, start);
    const mark = document.createElement("mark");
    mark.className = "flagged";
    mark.dataset.start = start;
    mark.dataset.end = end;
    if (mode === "remove") {
      const hidden = document.createElement("span");
      hidden.className = "hidden-token";
      hidden.textContent = HIDDEN;
      mark.appendChild(hidden);
    } else {
      appendRuns(mark, doc, start, end);
    }
    text.appendChild(mark);
    pos = end;
  }
  appendRuns(text, doc, pos, doc.chars.length);
  return text;
}

function renderDocument(doc) {
  const card = doc.card;
  card.replaceChildren();
  card.className = "doc";
  const header = document.createElement("header");
  const id = document.createElement("span");
  id.className = "doc-id";
  id.textContent = doc.id;
  const stats = document.createElement("span");
  stats.className = "stats";
  header.append(id, stats);
  card.appendChild(header);
  if (doc.error) {
    const error = document.createElement("p");
    error.className = "error";
    error.textContent = doc.error;
    card.appendChild(error);
    return;
  }
  if (!doc.result) {
    card.classList.add("pending");
    return;
  }
  const probs = doc.result.tokens.probs;
  const spans = spansAt(doc.charProbs, threshold);
  const flagged = flaggedTokens(probs, threshold);
  const fraction = probs.length ? flagged / probs.length : 0;
  const docScore = doc.result.doc_score === null ? "–" : doc.result.doc_score.toFixed(3);
  stats.textContent = `document score ${docScore} · flagged ${(100 * fraction).toFixed(1)}% ` +
    `(${flagged} of ${probs.length} tokens) · ${spans.length} span${spans.length === 1 ? "" : "s"}`;
  card.dataset.flaggedFraction = fraction;
  card.dataset.spans = spans.length;
  if (doc.chars.length === 0) {
    const empty = document.createElement("p");
    empty.className = "stats";
    empty.textContent = "(empty document)";
    card.appendChild(empty);
  } else {
    card.appendChild(renderText(doc, spans));
  }
}

function renderSummary() {
  const scored = documents.filter((d) => d.result);
  const failed = documents.filter((d) => d.error).length;
  const pending = documents.length - scored.length - failed;
  let spans = 0, flagged = 0, tokens = 0;
  for (const doc of scored) {
    spans += Number(doc.card.dataset.spans);
    flagged += flaggedTokens(doc.result.tokens.probs, threshold);
    tokens += doc.result.tokens.probs.length;
  }
  const parts = [`${documents.length} document${documents.length === 1 ? "" : "s"}`];
  if (pending) parts.push(`${pending} being scored`);
  if (failed) parts.push(`${failed} refused`);
  if (scored.length) {
    parts.push(`${spans} span${spans === 1 ? "" : "s"} over the threshold`);
    parts.push(`${flagged} of ${tokens} tokens flagged (${tokens ? ((100 * flagged) / tokens).toFixed(1) : "0.0"}%)`);
  }
  $("summary").textContent = parts.join(" · ");
}

function renderAll() {
  documents.forEach(renderDocument);
  renderSummary();
}

function setThreshold(value) {
  threshold = value;
  $("threshold").disabled = false;
  $("threshold").value = value;
  $("threshold-value").textContent = value.toFixed(3);
}

// ------------------------------------------------------------------------------------ input

function parseJsonl(content, name) {
  const docs = [];
  const problems = [];
  content.split(/\r?\n/).forEach((line, i) => {
    const where = `${name} line ${i + 1}`;
    if (!line.trim()) return;
    let record;
    try {
      record = JSON.parse(line);
    } catch (err) {
      problems.push(`${where}: not valid JSON (${err.message})`);
      return;
    }
    if (record === null || typeof record !== "object" || Array.isArray(record)) {
      problems.push(`${where}: expected a JSON object with a "text" field`);
    } else if (typeof record.text !== "string") {
      problems.push(`${where}: no "text" field with a string`);
    } else {
      docs.push({ id: record.id === undefined || record.id === null ? `line ${i + 1}` : String(record.id), text: record.text });
    }
  });
  return { docs, problems };
}

async function scoreDocuments(docs) {
  const list = $("documents");
  list.replaceChildren();
  const run = docs.map((d) => {
    const card = document.createElement("article");
    list.appendChild(card);
    return { ...d, chars: Array.from(d.text), card };
  });
  documents = run; // a later run replaces this one; its workers finish on detached cards
  renderAll();
  let next = 0;
  async function worker() {
    while (next < run.length) {
      const doc = run[next++];
      try {
        const payload = await filterDocument(doc);
        doc.result = payload.results[0];
        const scored = charProbabilities(doc.chars.length, doc.result.tokens.offsets, doc.result.tokens.probs);
        doc.charProbs = scored.probs;
        doc.tokenAt = scored.tokenAt;
        $("model").textContent = `model ${payload.model} · its threshold ${payload.threshold.toFixed(3)}`;
        if (threshold === null) setThreshold(payload.threshold);
      } catch (err) {
        doc.error = `${doc.id}: ${err.message}`;
      }
      renderDocument(doc);
      renderSummary();
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, run.length) }, worker));
}

$("score-text").addEventListener("click", () => {
  const text = $("text").value;
  $("messages").replaceChildren();
  if (!text.trim()) {
    showError("The text box is empty: paste a document, or open a JSONL file.");
    return;
  }
  scoreDocuments([{ id: "pasted text", text }]);
});

$("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  event.target.value = ""; // opening the same file again fires a new change
  $("messages").replaceChildren();
  const { docs, problems } = parseJsonl(await file.text(), file.name);
  if (docs.length === 0) {
    problems.forEach(showError);
    showError(`${file.name}: no document to show (each line must be a JSON object with a "text" string).`);
    return;
  }
  const shown = docs.slice(0, MAX_DOCUMENTS);
  const scoring = scoreDocuments(shown);
  problems.forEach(showError);
  if (docs.length > shown.length) showError(`${file.name}: showing the first ${shown.length} of ${docs.length} documents.`);
  await scoring;
});

let renderPending = false; // while the slider is dragged, re-render at most once per frame
$("threshold").addEventListener("input", (event) => {
  setThreshold(Number(event.target.value));
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    renderAll();
  });
});

document.querySelectorAll("input[name=mode]").forEach((radio) =>
  radio.addEventListener("change", (event) => {
    mode = event.target.value;
    renderAll();
  }),
);
