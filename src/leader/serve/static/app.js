// The leader web form: codes with title search, profile, earlier visits; shows the ranking.
// Plain DOM, no framework, no network beyond this server; text is set with textContent only.
"use strict";

const state = { token: sessionStorage.getItem("leader-token") || "", model: null,
                pickers: { current: {}, history: [] }, lastResult: null, showAll: false };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({ detail: "unreadable answer" }));
  if (response.status === 401) $("token-box").hidden = false;
  if (!response.ok) throw new Error(body.detail || ("HTTP " + response.status));
  return body;
}

// A code picker: type a code or words of its title, pick a suggestion, get a chip.
function makePicker(kind, id, labelText) {
  const codes = [];
  const input = el("input", { id: id + "-input", type: "text",
                              placeholder: "code or words of the title" });
  const list = el("ul", { id: id + "-suggest", class: "suggest", role: "listbox" });
  const chips = el("div", { id: id + "-chips", class: "chips" });
  list.hidden = true;
  let timer = null, seq = 0;

  // a chip reads as the code's title ("Congestive heart failure"); the code is its tooltip
  function add(code, title) {
    code = code.trim();
    if (!code || codes.includes(code)) return;
    codes.push(code);
    const remove = el("button", { type: "button", "aria-label": "remove " + code, text: "×" });
    const chip = el("span", { class: "chip", "data-code": code, title: code },
                    el("span", { class: "chip-title", text: title || code }), remove);
    remove.addEventListener("click", () => { codes.splice(codes.indexOf(code), 1); chip.remove(); });
    chips.append(chip);
    input.value = ""; list.hidden = true;
  }
  async function suggest() {
    const mine = ++seq, q = input.value.trim();
    if (!q) { list.hidden = true; return; }
    try {
      const data = await api(`/v1/vocab?kind=${kind}&limit=12&q=${encodeURIComponent(q)}`);
      if (mine !== seq) return;
      list.replaceChildren(...data.results.map((hit) => {
        const li = el("li", { role: "option", "data-code": hit.code, "data-title": hit.title },
                      el("span", { class: "code", text: hit.code }), hit.title);
        li.addEventListener("mousedown", (e) => { e.preventDefault(); add(hit.code, hit.title); });
        return li;
      }));
      list.hidden = data.results.length === 0;
    } catch (e) { showError(e.message); }
  }
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(suggest, 120); });
  input.addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    e.preventDefault();   // Enter adds a code; it never submits the form
    const first = list.hidden ? null : list.querySelector("li");
    if (first) add(first.dataset.code, first.dataset.title); else add(input.value);
  });
  input.addEventListener("blur", () => setTimeout(() => { list.hidden = true; }, 150));
  const node = el("div", { class: "picker" },
                  el("label", { for: id + "-input", text: labelText }), input, list, chips);
  return { node, codes };
}

function buildProfile(profile) {
  const box = $("profile");
  box.replaceChildren();
  for (const [field, values] of Object.entries(profile)) {
    let input;
    if (field === "age") {
      input = el("input", { id: "profile-age", type: "number", min: "0", max: "150",
                            placeholder: "years" });
    } else {
      input = el("select", { id: "profile-" + field },
                 el("option", { value: "", text: "(not given)" }),
                 ...values.filter((v) => v !== "unknown").map((v) => el("option", { value: v, text: v })));
    }
    box.append(el("label", { text: field.replace(/_/g, " ") }, input));
  }
}

function addHistoryVisit() {
  const n = state.pickers.history.length;
  const visit = { dx: makePicker("diagnoses", `h${n}-dx`, "Diagnoses"),
                  px: makePicker("procedures", `h${n}-px`, "Procedures"),
                  drugs: makePicker("drugs", `h${n}-drugs`, "Drugs given (ATC3 or NDC)") };
  state.pickers.history.push(visit);
  $("history").append(el("div", { class: "visit" },
                         el("strong", { text: `Earlier visit ${n + 1}` }),
                         visit.dx.node, visit.px.node, visit.drugs.node));
}

function patientFromForm() {
  const profile = {};
  for (const field of Object.keys(state.model.profile)) {
    const value = $("profile-" + field).value;
    if (value === "") continue;
    profile[field] = field === "age" ? Number.parseInt(value, 10) : value;
  }
  const visits = state.pickers.history
    .map((v) => ({ diagnoses: [...v.dx.codes], procedures: [...v.px.codes], drugs: [...v.drugs.codes] }))
    .filter((v) => v.diagnoses.length || v.procedures.length || v.drugs.length);
  visits.push({ diagnoses: [...state.pickers.current.dx.codes],
                procedures: [...state.pickers.current.px.codes] });
  return { profile, visits };
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// "because: Congestive heart failure +21.0 pts, age: 70 +3.2 pts" under a recommended class
function whyLine(reasons, unit) {
  const shown = reasons.map((x) => unit === "probability"
    ? `${x.title} +${(100 * x.contribution).toFixed(1)} pts`
    : `${x.title} +${x.contribution.toFixed(2)} log-odds`);
  return el("div", { class: "why",
                     text: "because: " + (shown.length ? shown.join(", ") : "no single input") });
}

function renderResult() {
  const r = state.lastResult;
  const chosen = new Set(r.recommended);
  $("result-model").textContent =
    `model ${r.model.id} (leader ${r.model.version}); ` +
    (r.top_k ? `top ${r.top_k}` : `threshold ${r.threshold}`) + `; ${r.recommended.length} recommended`;
  $("ddi").replaceChildren(...r.ddi_warnings.map((w) => el("p", { class: "ddi",
    text: `Interaction: ${w.names[0]} (${w.drugs[0]}) with ${w.names[1]} (${w.drugs[1]})` })));
  $("warnings").replaceChildren(...r.warnings.map((w) => el("li", { text: w })));
  const rows = state.showAll ? r.ranked : r.ranked.slice(0, Math.max(20, r.recommended.length));
  const reasons = (r.explanation && r.explanation.drugs) || {};
  $("ranked").querySelector("tbody").replaceChildren(...rows.map((d, i) => {
    const fill = el("span");
    fill.style.width = (100 * d.probability).toFixed(1) + "%";
    const name = el("td", { class: "name" }, d.name);
    if (reasons[d.code]) name.append(whyLine(reasons[d.code], r.explanation.unit));
    const tr = el("tr", { class: chosen.has(d.code) ? "recommended" : "", "data-code": d.code },
      el("td", { text: String(i + 1) }), el("td", { class: "code", text: d.code }), name,
      el("td", { class: "prob" }, el("span", { class: "bar" }, fill),
         (100 * d.probability).toFixed(1) + "\u00a0%"),
      el("td", {}, chosen.has(d.code) ? el("span", { class: "badge", text: "recommended" }) : ""));
    return tr;
  }));
  $("show-all").hidden = state.showAll || rows.length >= r.ranked.length;
  $("result").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  showError("");
  const topK = $("top-k").value;
  const query = topK ? `?top_k=${encodeURIComponent(topK)}` : "";
  $("submit").disabled = true;
  try {
    state.lastResult = await api("/v1/recommend" + query, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(Object.assign(patientFromForm(), { explain: true })) });
    state.showAll = false;
    renderResult();
  } catch (e) { showError(e.message); } finally { $("submit").disabled = false; }
}

async function loadModel() {
  try {
    state.model = await api("/v1/model");
    $("token-box").hidden = !state.token;
    $("model-line").textContent = `model ${state.model.model.id} · ` +
      `${state.model.vocab_sizes.drugs} drug classes · ICD-${state.model.default_icd_version} ` +
      "by default";
    buildProfile(state.model.profile);
    $("top-k").max = String(state.model.vocab_sizes.drugs);
  } catch (e) { showError(e.message); }
}

function init() {
  for (const slot of document.querySelectorAll(".picker-slot")) {
    const p = makePicker(slot.dataset.kind, slot.dataset.id,
                         slot.dataset.kind === "diagnoses" ? "Diagnoses" : "Procedures");
    state.pickers.current[slot.dataset.id] = p;
    slot.replaceWith(p.node);
  }
  $("add-visit").addEventListener("click", addHistoryVisit);
  $("patient-form").addEventListener("submit", submit);
  $("show-all").addEventListener("click", () => { state.showAll = true; renderResult(); });
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value.trim();
    sessionStorage.setItem("leader-token", state.token);
    showError("");
    loadModel();
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", init);
