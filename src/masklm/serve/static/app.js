// The masklm page: pick a served model, send its request to the JSON API, draw the answer.
// Plain DOM code, no build step; user text is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];

const HINTS = {
  "fill-mask": 'Write a sentence with [MASK] where a word should be predicted.',
  "classification": "Write a text to classify.",
  "token-classification": "Write a sentence; its entities are highlighted.",
  "qa": "Ask a question about a context; the answer is highlighted in it.",
  "multiple-choice": "Give a context and its possible endings.",
  "feature-extraction": "This model only embeds texts (POST /v1/embed).",
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function current() {
  return models.find((m) => m.name === $("model").value);
}

function showFields() {
  const m = current();
  const task = m ? m.task : "";
  $("fields-text").hidden = task === "qa" || task === "multiple-choice";
  $("fields-qa").hidden = task !== "qa";
  $("fields-choice").hidden = task !== "multiple-choice";
  $("task-hint").textContent = m ? `${m.task}${m.labels ? " · labels: " + m.labels.join(", ") : ""}. ${HINTS[m.task] || ""}` : "";
  $("run").disabled = !m || task === "feature-extraction";
  if (task === "fill-mask" && !$("text").value) $("text").value = "the movie was [MASK] .";
}

function request(m) {
  if (m.task === "fill-mask") return ["/v1/fill-mask", { model: m.name, inputs: $("text").value, top_k: 5 }];
  if (m.task === "qa") return ["/v1/predict", { model: m.name, inputs: { question: $("question").value, context: $("context").value } }];
  if (m.task === "multiple-choice") {
    const endings = $("endings").value.split("\n").filter((e) => e.trim());
    return ["/v1/predict", { model: m.name, inputs: { context: $("choice-context").value, endings } }];
  }
  return ["/v1/predict", { model: m.name, inputs: $("text").value }];
}

function bars(rows, bestIndex) {
  const box = el("div", "bars");
  rows.forEach(([name, score], i) => {
    const row = el("div", "row" + (i === bestIndex ? " best" : ""));
    row.append(el("span", "name", name));
    const track = el("div", "track");
    const bar = el("div", "bar");
    bar.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
    track.append(bar);
    row.append(track, el("span", "score", score.toFixed(3)));
    box.append(row);
  });
  return box;
}

function highlighted(text, spans) {
  // spans: [{start, end, label}] sorted, not overlapping. The server's offsets count code points (Python's
  // str), JavaScript's strings count UTF-16 units: an emoji before a span would shift it, so cut code points.
  const chars = Array.from(text);
  const part = (a, b) => chars.slice(a, b).join("");
  const box = el("div", "marked");
  let at = 0;
  for (const s of spans) {
    box.append(document.createTextNode(part(at, s.start)));
    const mark = el("mark", "", part(s.start, s.end));
    if (s.label) mark.append(el("span", "tag", s.label));
    box.append(mark);
    at = s.end;
  }
  box.append(document.createTextNode(part(at)));
  return box;
}

function render(m, body, answer) {
  const out = $("result");
  out.replaceChildren();
  if (m.task === "fill-mask") {
    answer.outputs[0].forEach((candidates, i) => {
      const block = el("div", "mask");
      block.append(el("h3", "", `[MASK] ${i + 1}`));
      block.append(bars(candidates.map((c) => [c.token, c.score]), 0));
      out.append(block);
    });
    return;
  }
  const a = answer.outputs[0];
  if (m.task === "classification") {
    if (a.scores) out.append(bars(Object.entries(a.scores), 0));
    else out.append(el("p", "", `score: ${a.score.toFixed(4)}`));
  } else if (m.task === "token-classification") {
    out.append(highlighted(body.inputs, a.entities));
    if (!a.entities.length) out.append(el("p", "hint", "no entities found"));
  } else if (m.task === "qa") {
    const ctx = body.inputs.context;
    out.append(el("p", "", a.answer ? `answer: ${a.answer} (${a.score.toFixed(3)})` : "no answer"));
    out.append(highlighted(ctx, a.start === null ? [] : [{ start: a.start, end: a.end }]));
  } else if (m.task === "multiple-choice") {
    out.append(bars(body.inputs.endings.map((e, i) => [e, a.scores[i]]), a.choice));
  } else {
    out.append(el("pre", "", JSON.stringify(a, null, 1)));
  }
}

async function run(event) {
  event.preventDefault();
  const m = current();
  if (!m) return;
  const [path, body] = request(m);
  $("error").hidden = true;
  $("run").disabled = true;
  try {
    const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    render(m, body, answer);
  } catch (e) {
    $("result").replaceChildren();
    $("error").textContent = e.message;
    $("error").hidden = false;
  } finally {
    $("run").disabled = false;
  }
}

async function start() {
  const response = await fetch("/v1/models");
  models = await response.json();
  for (const m of models) $("model").append(new Option(`${m.name} (${m.task})`, m.name));
  $("model").addEventListener("change", showFields);
  $("form").addEventListener("submit", run);
  showFields();
  document.body.dataset.ready = "1";
}

start();
