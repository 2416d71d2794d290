// The viewer: sends a study's images to POST /v1/studies and shows what comes back. Server text is only ever
// set as textContent (never parsed as HTML); the API key, once asked for, is kept in this tab's sessionStorage.
"use strict";

const KEY_STORE = "mura-api-key";
const $ = (id) => document.getElementById(id);
let picked = [];

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

function headers() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

function askForKey(text) {
  $("key-label").hidden = false;
  $("api-key").focus();
  say(text, true);
}

function pick(files) {
  picked = Array.from(files);
  $("picked").textContent = picked.length ? `${picked.length} image(s): ${picked.map((f) => f.name).join(", ")}` : "";
}

async function showModel() {
  const answer = await fetch("/v1/model", { headers: headers() });
  if (answer.status === 401) {
    askForKey("This service needs an API key: enter it, then score the study.");
    return;
  }
  if (answer.ok) {
    const body = await answer.json();
    $("model-name").textContent = `${body.model.name} (${body.model.checkpoints.join(", ")})`;
  }
}

function viewCard(view) {
  const card = document.createElement("div");
  card.className = "view";
  const title = document.createElement("h3");
  title.textContent = view.file;
  card.append(title);
  if (view.error) {
    const error = document.createElement("p");
    error.className = "error";
    error.textContent = view.error;
    card.append(error);
    return card;
  }
  const line = document.createElement("div");
  line.className = "view-probability";
  line.dataset.probability = view.probability;
  line.textContent = `probability ${view.probability.toFixed(4)} · weight ${view.weight.toFixed(3)}`;
  card.append(line);
  if (view.cam_overlay_png) {
    const stack = document.createElement("div");
    stack.className = "stack";
    const base = new Image();
    base.alt = `${view.file}`;
    base.src = `data:image/png;base64,${view.radiograph_png}`;
    const cam = new Image();
    cam.alt = `CAM of ${view.file}`;
    cam.className = "cam";
    cam.src = `data:image/png;base64,${view.cam_overlay_png}`;
    cam.style.opacity = $("opacity").value / 100;
    stack.append(base, cam);
    card.append(stack);
  }
  return card;
}

function showResult(body) {
  const study = body.study;
  $("study-probability").textContent = study.probability.toFixed(4);
  $("study-probability").dataset.probability = study.probability;
  $("decision").textContent = study.decision;
  $("decision").className = study.decision;
  $("threshold").textContent = `(abnormal if probability > ${study.threshold.toFixed(3)})`;
  const sums = body.model.checkpoint_sha256.map((sum) => (sum || "").slice(0, 12));
  $("checkpoint").textContent = `${body.model.name}: ${body.model.checkpoints.join(", ")} · sha256 ${sums.join(", ")}`;
  $("model-name").textContent = `${body.model.name} (${body.model.checkpoints.join(", ")})`;
  $("timings").textContent = `answered in ${body.timings_ms.total} ms (model ${body.timings_ms.model} ms)`;
  $("views").replaceChildren(...body.views.map(viewCard));
  $("result").hidden = false;
}

async function score(event) {
  event.preventDefault();
  if ($("api-key").value) sessionStorage.setItem(KEY_STORE, $("api-key").value);
  if (!picked.length) {
    say("Pick or drop the study's images first.", true);
    return;
  }
  const form = new FormData();
  for (const file of picked) form.append("files", file, file.name);
  if ($("body-part").value) form.append("body_part", $("body-part").value);
  $("score").disabled = true;
  say("Scoring…");
  try {
    const cam = $("cam").checked ? "true" : "false";
    const answer = await fetch(`/v1/studies?cam=${cam}`, { method: "POST", body: form, headers: headers() });
    const body = await answer.json();
    if (answer.status === 401) {
      askForKey("This service needs an API key: enter it and score again.");
    } else if (!answer.ok) {
      say(`Refused (${answer.status}): ${body.error ? body.error.message : answer.statusText}`, true);
    } else {
      showResult(body);
      const refused = body.views.filter((view) => view.error).length;
      say(refused ? `${refused} view(s) could not be read; the study was scored on the others.` : "");
    }
  } catch (error) {
    say(`The service did not answer: ${error}`, true);
  } finally {
    $("score").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("study-form").addEventListener("submit", score);
  $("files").addEventListener("change", (event) => pick(event.target.files));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    pick(event.dataTransfer.files);
  });
  $("opacity").addEventListener("input", () => {
    for (const cam of document.querySelectorAll("img.cam")) cam.style.opacity = $("opacity").value / 100;
  });
  if (apiKey()) $("api-key").value = apiKey();
  showModel();
});
