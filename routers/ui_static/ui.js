// The glore page: one /solve drawn as when (the ORM gate), where (the SORM's steps), how (the
// candidates), and what it cost; and a comparison of every strategy on one question.
// Every text from the server or the user goes into the page with textContent (or a text node),
// never as markup; the page's Content-Security-Policy runs no inline script besides.
"use strict";

(() => {
  const KEY_SLOT = "glore.apiKey";
  const EXAMPLE =
    "Eli has 5 baskets, and each holds 6 bells. After that, Eli has twice as many bells as " +
    "before. How many bells does he end up with?";
  const NUMBERS = ["orm_threshold", "sorm_threshold", "n", "seed", "max_new_tokens"];
  const CHOICES = ["refine", "local_when_unflagged"];
  const REASONS = {
    orm_above_threshold: "the ORM trusts the draft at least as much as the threshold: kept",
    orm_below_threshold: "the ORM's score of the draft is below the threshold: refined",
    refine_always: "refine=always: every draft is refined, whatever the ORM says",
    empty_draft: "the draft has no steps: refined",
    strategy_does_not_refine: "this strategy never refines",
    no_step_flagged:
      "refined, but the SORM flagged no step, so only globally (local_when_unflagged=skip)",
    draft_too_long: "the draft does not fit the ORM's context: kept unscored",
  };

  const $ = (id) => document.getElementById(id);
  let options = null;
  let comparison = null; // the last comparison, so "back" can show it again

  // ------------------------------------------------------------------ building blocks

  /** An element; `props.text` becomes its textContent, children are nodes or plain text. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = String(value);
      else if (name === "data") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmt = (x, digits = 3) =>
    x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toFixed(digits);
  const seconds = (x) => `${fmt(x)} s`;
  const safeClass = (name) => (/^[a-z_]+$/.test(name) ? name : "other");
  const stepsOf = (text) =>
    text === null || text === undefined
      ? null
      : text
          .split("\n")
          .map((s) => s.trim())
          .filter(Boolean);

  function definitions(pairs, cls) {
    return el(
      "dl",
      { class: cls },
      pairs.map(([term, value, data]) =>
        el("div", {}, el("dt", { text: term }), el("dd", { data }, value)),
      ),
    );
  }

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, code, message, requestId, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.requestId = requestId;
      this.details = details || [];
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const key = sessionStorage.getItem(KEY_SLOT);
    if (key) headers.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "same-origin",
      });
    } catch (err) {
      throw new ApiError(0, "no_answer", `the server did not answer (${err.message})`, null);
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const e = (data && data.error) || {};
      throw new ApiError(
        response.status,
        e.code || `http_${response.status}`,
        e.message || response.statusText || "the request failed",
        e.request_id || response.headers.get("X-Request-Id"),
        e.details,
      );
    }
    return data;
  }

  // ------------------------------------------------------------------ the form

  function fillSelect(select, values, fallback, label) {
    select.replaceChildren(
      el("option", { value: "", text: `default (${fallback})` }),
      ...values.map((v) => el("option", { value: v, text: label ? label(v) : v })),
    );
  }

  /** The request the form describes: what the user left empty is the server's default. */
  function request(strategy) {
    const body = { question: $("question").value, include_trace: true };
    if (strategy) body.strategy = strategy;
    for (const name of CHOICES) {
      if ($(name).value) body[name] = $(name).value;
    }
    for (const name of NUMBERS) {
      const raw = $(name).value.trim();
      if (raw === "") continue;
      const value = Number(raw);
      // Not a number: sent as typed, so the server's 422 names the field.
      body[name] = Number.isFinite(value) ? value : raw;
    }
    return body;
  }

  /** Put a past request back into the form. */
  function restoreForm(req) {
    $("question").value = req.question || "";
    $("strategy").value = req.strategy || "";
    for (const name of CHOICES) $(name).value = req[name] || "";
    for (const name of NUMBERS) $(name).value = req[name] === null || req[name] === undefined ? "" : String(req[name]);
  }

  function busy(on) {
    for (const id of ["solve", "compare", "example"]) $(id).disabled = on;
    $("busy").hidden = !on;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").replaceChildren();
  }

  function showError(err) {
    const box = $("error");
    const status = err.status ? `${err.status} ` : "";
    const parts = [
      el("span", { class: "code", text: `${status}${err.code}` }),
      ": ",
      el("span", { class: "message", text: err.message }),
    ];
    if (err.requestId) parts.push(el("div", { class: "note", text: `request id ${err.requestId}` }));
    if (err.details && err.details.length) {
      parts.push(
        el(
          "ul",
          {},
          err.details.map((d) =>
            el("li", { text: `${(d.loc || []).join(".")}: ${d.msg}` }),
          ),
        ),
      );
    }
    if (err.status === 401) {
      parts.push(el("div", { text: "Enter this server's API key above, then try again." }));
      showKeyBox(true);
      $("api-key").focus();
    }
    box.replaceChildren(...parts);
    box.hidden = false;
  }

  function showKeyBox(needed) {
    $("key-box").hidden = false;
    $("key-box").classList.toggle("needed", needed);
  }

  // ------------------------------------------------------------------ one solve

  function show(view) {
    $("solve-view").hidden = view !== "solve";
    $("compare-view").hidden = view !== "compare";
  }

  function renderSolve(req, res, { note, back } = {}) {
    const draft = res.candidates.find((c) => c.kind === "draft") || null;
    const view = $("solve-view");
    const parts = [
      el(
        "h2",
        {},
        "Question ",
        el("span", { class: "sub", text: `strategy ${res.strategy}` }),
        back ? el("button", { type: "button", id: "back", class: "inline", text: "Back to the comparison" }) : null,
      ),
      el("p", { class: "question", id: "shown-question", text: req.question }),
      note ? el("p", { class: "note", text: note }) : null,
      warnings(res),
      summary(res),
      el("div", { class: "two" }, gate(res, draft), where(res, draft)),
      how(res, draft),
      cost(res),
    ];
    view.replaceChildren(...parts.filter(Boolean));
    if (back) $("back").addEventListener("click", () => show("compare"));
    show("solve");
  }

  function warnings(res) {
    const items = res.warnings.map((w) => el("li", { data: { code: w.code } }, el("code", { text: w.code }), " ", w.message));
    const dropped = (res.decision.dropped || []).map((d) =>
      el("li", {}, el("code", { text: `dropped ${d.candidate}` }), ` at ${d.stage}: ${d.message}`),
    );
    if (!items.length && !dropped.length) return null;
    return el(
      "div",
      { class: "warnings", id: "warnings", role: "note" },
      el("strong", { text: "Warnings: do not trust this answer blindly" }),
      el("ul", {}, items, dropped),
    );
  }

  function summary(res) {
    const trace = options && options.traces_kept > 0
      ? el("a", { href: `/ui?request_id=${encodeURIComponent(res.request_id)}`, id: "trace-link", text: "trace link" })
      : null;
    const pairs = [
      ["Answer", el("span", { class: "answer", id: "answer", text: res.answer ?? "no answer stated" })],
      ["Winner", el("span", { id: "winner", text: res.winner })],
      ["Reranker", res.reranker ?? "—"],
      ["Request id", el("span", {}, el("code", { id: "request-id", text: res.request_id }), trace ? " " : null, trace)],
    ];
    if (res.votes) {
      pairs.push(["Votes", Object.entries(res.votes).map(([a, n]) => `${a} ×${n}`).join(", ")]);
    }
    return definitions(pairs, "summary");
  }

  function gate(res, draft) {
    const d = res.decision;
    const box = el("section", { class: "gate", id: "gate" }, el("h2", {}, "When: the ORM gate"));
    if (!draft) {
      box.append(el("p", { text: "No draft: this strategy samples solutions and picks one, without a gate." }));
    } else if (draft.orm_score === null) {
      box.append(el("p", { text: "The ORM did not score the draft in this strategy." }));
    } else {
      const below = draft.orm_score < d.orm_threshold;
      const fill = el("span", { class: below ? "fill below" : "fill" });
      fill.style.setProperty("width", `${Math.max(0, Math.min(1, draft.orm_score)) * 100}%`);
      const tick = el("span", { class: "tick", title: `threshold ${fmt(d.orm_threshold)}` });
      tick.style.setProperty("left", `calc(${d.orm_threshold * 100}% - 1px)`);
      box.append(
        el("div", { class: "meter", role: "img", "aria-label": `ORM score ${fmt(draft.orm_score)} against threshold ${fmt(d.orm_threshold)}` }, fill, tick),
        el(
          "p",
          {},
          "draft's ORM score ",
          el("strong", { id: "draft-orm", text: fmt(draft.orm_score) }),
          below ? " < " : " ≥ ",
          "threshold ",
          el("strong", { id: "orm-threshold", text: fmt(d.orm_threshold) }),
          ` (refine=${d.refine_mode})`,
        ),
      );
    }
    box.append(
      el(
        "p",
        {},
        "Decision: ",
        el("span", { class: `verdict ${safeClass(d.action)}`, id: "decision", text: d.action }),
        " — ",
        el("code", { id: "reason", text: d.reason }),
        `: ${REASONS[d.reason] || ""}`,
      ),
    );
    return box;
  }

  function where(res, draft) {
    const d = res.decision;
    const box = el(
      "section",
      { class: "where", id: "where" },
      el("h2", {}, "Where: the draft's steps by SORM score ", el("span", { class: "sub", text: `(threshold ${fmt(d.sorm_threshold)})` })),
    );
    const scores = res.sorm_step_scores;
    const steps = draft ? stepsOf(draft.text) : null;
    if (!draft) {
      box.append(el("p", { text: "No draft in this strategy." }));
      return box;
    }
    if (!scores) box.append(el("p", { class: "note", text: "The SORM was not consulted by this strategy." }));
    const count = Math.max(steps ? steps.length : 0, scores ? scores.length : 0);
    const list = el("ol", { class: "steps", id: "draft-steps" });
    for (let i = 0; i < count; i += 1) {
      if (d.local_target_step === i) {
        list.append(
          el("li", { class: "bad-marker", id: "bad-marker", text: "[BAD] the local refiner's critique went here: it kept the steps above and rewrote from this one" }),
        );
      }
      const score = scores ? scores[i] : null;
      const badges = [];
      if (i === res.first_flagged_step) badges.push(el("span", { class: "badge flag", text: "first flagged" }));
      else if (score !== null && score < d.sorm_threshold) badges.push(el("span", { class: "badge flag", text: "below threshold" }));
      const classes = [score === null ? "plain" : "step"];
      if (score !== null && score < d.sorm_threshold) classes.push("weak");
      if (i === res.first_flagged_step) classes.push("flagged");
      const item = el(
        "li",
        { class: classes.join(" "), data: { index: i } },
        el("span", { class: "idx", text: `${i + 1}` }),
        score === null ? null : el("span", { class: "score", text: fmt(score) }),
        el("span", {}, el("span", { class: "text", text: steps ? steps[i] ?? "" : "(text needs include_trace)" }), badges),
      );
      if (score !== null) item.style.setProperty("--sorm", String(Math.max(0, Math.min(1, score))));
      list.append(item);
    }
    box.append(list);
    if (scores) {
      box.append(el("div", { class: "legend" }, "SORM 0", el("span", { class: "ramp" }), "1 (step looks right)"));
    }
    return box;
  }

  function how(res, draft) {
    const draftSteps = draft ? stepsOf(draft.text) : null;
    const target = res.decision.local_target_step;
    const cards = res.candidates.map((c) => {
      const steps = c.kind === "draft" ? draftSteps : stepsOf(c.text) || (c.label === res.winner ? res.steps : null);
      const won = c.label === res.winner;
      const list = el("ol", { class: "steps" });
      (steps || []).forEach((s, i) => {
        if (c.kind === "local" && target === i) {
          list.append(el("li", { class: "bad-marker", text: "[BAD] critique: rewritten from here" }));
        }
        const changed = c.kind !== "draft" && draftSteps !== null && draftSteps[i] !== s;
        const kept = c.kind === "local" && target !== null && i < target && !changed;
        list.append(
          el(
            "li",
            { class: changed ? "changed" : kept ? "kept" : "" },
            el("span", { class: "idx", text: `${i + 1}` }),
            el("span", {}, el("span", { class: "text", text: s }), changed ? el("span", { class: "badge chg", text: "changed" }) : null),
          ),
        );
      });
      return el(
        "article",
        { class: won ? "card winner" : "card", data: { label: c.label } },
        el("h3", {}, c.label, c.kind !== c.label ? ` (${c.kind})` : null, won ? el("span", { class: "badge win", text: "winner" }) : null),
        definitions(
          [
            ["answer", c.answer ?? "none", { field: "answer" }],
            ["ORM score", fmt(c.orm_score), { field: "orm_score" }],
            ["rank_score", fmt(c.rank_score, 4), { field: "rank_score" }],
            ["tokens", String(c.num_tokens), { field: "num_tokens" }],
            ["finish", c.finish_reason, { field: "finish_reason" }],
          ],
          "",
        ),
        steps ? list : el("p", { class: "note", text: "(steps need include_trace)" }),
      );
    });
    return el(
      "section",
      { class: "how", id: "how" },
      el("h2", {}, "How: the candidates ", el("span", { class: "sub", text: draft && res.candidates.length > 1 ? "(steps that differ from the draft's are highlighted)" : "" })),
      el("div", { class: "cands", id: "candidates" }, cards),
    );
  }

  function cost(res) {
    const stages = Object.entries(res.timings).filter(([name]) => name !== "total");
    const sum = stages.reduce((acc, [, s]) => acc + s, 0) || 1;
    const bar = el("div", { class: "timebar", id: "timebar", role: "img", "aria-label": "seconds per stage" });
    for (const [name, s] of stages) {
      const seg = el("span", { class: `stage-${safeClass(name)}`, title: `${name}: ${seconds(s)}`, data: { stage: name } });
      seg.style.setProperty("width", `${(s / sum) * 100}%`);
      bar.append(seg);
    }
    const timeRows = stages.map(([name, s]) =>
      el(
        "tr",
        { data: { stage: name } },
        el("td", {}, el("span", { class: `swatch stage-${safeClass(name)}` }), name),
        el("td", { class: "num", text: seconds(s) }),
        el("td", { class: "num", text: `${fmt((s / sum) * 100, 1)}%` }),
      ),
    );
    timeRows.push(el("tr", { data: { stage: "total" } }, el("th", { text: "total (wall)" }), el("td", { class: "num", text: seconds(res.timings.total) }), el("td")));
    const tokenRows = Object.entries(res.usage.by_role).map(([role, n]) =>
      el("tr", { data: { role } }, el("td", { text: role }), el("td", { class: "num", text: String(n) })),
    );
    tokenRows.push(el("tr", { data: { role: "total" } }, el("th", { text: "total generated" }), el("td", { class: "num", text: String(res.usage.completion_tokens) })));
    return el(
      "section",
      { class: "cost two", id: "cost" },
      el(
        "div",
        {},
        el("h2", {}, "Timings per stage"),
        bar,
        el("table", { id: "timings" }, el("thead", {}, el("tr", {}, el("th", { text: "stage" }), el("th", { class: "num", text: "seconds" }), el("th", { class: "num", text: "share" }))), el("tbody", {}, timeRows)),
      ),
      el(
        "div",
        {},
        el("h2", {}, "Tokens"),
        el("table", { id: "usage" }, el("thead", {}, el("tr", {}, el("th", { text: "role" }), el("th", { class: "num", text: "tokens" }))), el("tbody", {}, tokenRows)),
      ),
    );
  }

  async function solve() {
    clearError();
    busy(true);
    const body = request($("strategy").value);
    try {
      const res = await api("POST", "/solve", body);
      renderSolve(body, res);
      if (location.search) history.replaceState(null, "", "/ui");
    } catch (err) {
      showError(err);
    } finally {
      busy(false);
    }
  }

  async function loadTrace(id) {
    clearError();
    busy(true);
    try {
      const trace = await api("GET", `/traces/${encodeURIComponent(id)}`);
      restoreForm(trace.request);
      renderSolve(trace.request, trace.response, { note: `A kept trace: request ${trace.request_id}, answered ${trace.stored_at}.` });
    } catch (err) {
      showError(err);
    } finally {
      busy(false);
    }
  }

  // ------------------------------------------------------------------ compare strategies

  function renderCompare() {
    const { question, rows } = comparison;
    const done = rows.filter((r) => r.res);
    const answers = new Map();
    for (const r of done) {
      const a = r.res.answer ?? "none";
      answers.set(a, (answers.get(a) || 0) + 1);
    }
    const agree = done.length
      ? `Answers: ${[...answers.entries()].map(([a, n]) => `${a} (${n} of ${done.length})`).join(", ")}`
      : "";
    const body = rows.map((r) => {
      const name = el("td", {}, el("code", { text: r.strategy }));
      if (r.error) {
        return el("tr", { class: "failed", data: { strategy: r.strategy } }, name, el("td", { colspan: 8, text: `${r.error.status || ""} ${r.error.code}: ${r.error.message}` }));
      }
      if (!r.res) {
        return el("tr", { class: "running", data: { strategy: r.strategy } }, name, el("td", { colspan: 8, text: r.running ? "running…" : "waiting" }));
      }
      const res = r.res;
      const win = res.candidates.find((c) => c.label === res.winner);
      const details = el("button", { type: "button", text: "details" });
      details.addEventListener("click", () => renderSolve(r.req, res, { back: true }));
      return el(
        "tr",
        { data: { strategy: r.strategy } },
        name,
        el("td", { class: "answer", text: res.answer ?? "none" }),
        el("td", { text: res.winner }),
        el("td", { text: `${res.decision.action} (${res.decision.reason})` }),
        el("td", { class: "num", text: win ? fmt(win.orm_score) : "—" }),
        el("td", { class: "num", text: String(res.candidates.length) }),
        el("td", { class: "num tokens", text: String(res.usage.completion_tokens) }),
        el("td", { class: "num seconds", text: fmt(res.timings.total) }),
        el("td", {}, res.warnings.length ? `${res.warnings.map((w) => w.code).join(", ")} ` : "", details),
      );
    });
    const head = ["strategy", "answer", "winner", "decision", "winner's ORM", "candidates", "tokens", "seconds", ""].map((h, i) =>
      el("th", { class: i >= 4 && i <= 7 ? "num" : "", text: h }),
    );
    $("compare-view").replaceChildren(
      el("h2", {}, "Compare strategies"),
      el("p", { class: "question", text: question }),
      el("p", { class: "note", text: "One request per strategy, one after another, with the same knobs and seed. Tokens are all the models generated; seconds are each solve's wall time." }),
      el("p", { class: "agree", id: "agree", text: agree }),
      el("div", { class: "scroll" }, el("table", { id: "compare-table" }, el("thead", {}, el("tr", {}, head)), el("tbody", {}, body))),
    );
    show("compare");
  }

  async function compare() {
    clearError();
    busy(true);
    const base = request(null);
    comparison = { question: base.question, rows: options.strategies.map((s) => ({ strategy: s })) };
    renderCompare();
    try {
      for (const row of comparison.rows) {
        row.running = true;
        renderCompare();
        row.req = { ...base, strategy: row.strategy };
        try {
          row.res = await api("POST", "/solve", row.req);
        } catch (err) {
          row.error = err;
          if (err.status === 401 || err.status === 422) {
            showError(err); // the same for every strategy: say it once, above
          }
        }
        row.running = false;
        renderCompare();
      }
    } finally {
      busy(false);
    }
  }

  // ------------------------------------------------------------------ start

  async function status() {
    const badge = $("server-status");
    try {
      const r = await fetch("/ready", { cache: "no-store" });
      badge.textContent = r.ok ? "ready" : "not ready";
      badge.className = r.ok ? "status ok" : "status down";
    } catch {
      badge.textContent = "unreachable";
      badge.className = "status down";
    }
  }

  async function start() {
    $("ask").addEventListener("submit", (e) => {
      e.preventDefault();
      solve();
    });
    $("compare").addEventListener("click", compare);
    $("example").addEventListener("click", () => {
      $("question").value = EXAMPLE;
    });
    const key = $("api-key");
    key.value = sessionStorage.getItem(KEY_SLOT) || "";
    key.addEventListener("change", () => {
      const value = key.value.trim();
      if (value) sessionStorage.setItem(KEY_SLOT, value);
      else sessionStorage.removeItem(KEY_SLOT);
      const id = new URLSearchParams(location.search).get("request_id");
      if (id && $("solve-view").hidden) loadTrace(id);
    });
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_SLOT);
      key.value = "";
    });
    status();
    try {
      options = await api("GET", "/ui/options.json");
    } catch (err) {
      showError(err);
      return;
    }
    const d = options.defaults;
    fillSelect($("strategy"), options.strategies, d.strategy);
    fillSelect($("refine"), options.refine_modes, d.refine);
    fillSelect($("local_when_unflagged"), options.local_when_unflagged, d.local_when_unflagged, (v) => (v === "skip" ? "skip (global only)" : "lowest step"));
    $("orm_threshold").placeholder = String(d.orm_threshold);
    $("sorm_threshold").placeholder = String(d.sorm_threshold);
    $("n").placeholder = String(d.n);
    $("seed").placeholder = "none";
    $("max_new_tokens").placeholder = String(d.max_new_tokens);
    $("question").maxLength = options.limits.max_question_chars;
    if (options.auth) showKeyBox(!key.value);
    const id = new URLSearchParams(location.search).get("request_id");
    if (id) loadTrace(id);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
