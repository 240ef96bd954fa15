/* paramsched dashboard. Plain DOM, no framework; every job-provided string is set as
 * text (textContent / createTextNode), never parsed as HTML. The bearer token lives in
 * sessionStorage (this tab only) and travels in the Authorization header, never in a URL.
 */
(function () {
  "use strict";
  const TOKEN_KEY = "paramsched.token";
  const LIST_REFRESH_MS = 3000, JOB_REFRESH_MS = 4000, PAGE_SIZE = 50;
  const CHART_POINTS = 1000;  // samples per curve: exact values up to 1,000 iterations
  const CHANGE_KINDS = ["set", "scale", "hold", "decay", "rewarm", "extend"];
  const CHANGE_ACTIONS = new Set([...CHANGE_KINDS, "reschedule"]);
  const fmt = (v) => window.PSChart.fmt(v);
  let session = null;       // {auth, principal, admin, tls}
  let timer = null;         // the live refresh of the page shown
  let generation = 0;       // bumped on every route change: stale answers are dropped

  // -- DOM helpers -------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const main = () => document.getElementById("main");
  function show(...nodes) { const m = main(); m.replaceChildren(...nodes); }
  const when = (t) => t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "-";
  const jobHref = (id) => "#/jobs/" + encodeURIComponent(id);

  // -- the API ---------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `HTTP ${status}`);
      this.status = status; this.code = e.code || "http"; this.field = e.field || null;
    }
  }
  async function api(path, body) {
    const headers = {"Accept": "application/json"};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers["Authorization"] = "Bearer " + token;
    const init = {headers, cache: "no-store", credentials: "same-origin"};
    if (body !== undefined) {
      init.method = "POST"; headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }
  const num = (v) => typeof v === "number" ? v : (v === "NaN" ? NaN : v === "Infinity" ? Infinity :
                                                   v === "-Infinity" ? -Infinity : Number(v));

  // -- session ---------------------------------------------------------------------------
  async function loadSession() {
    const who = document.getElementById("whoami");
    try {
      session = await api("/api/v1/session");
      who.textContent = session.auth
        ? `signed in as ${session.principal}${session.admin ? " (admin)" : ""}`
        : "no authentication on this server";
      document.getElementById("token-forget").disabled = !sessionStorage.getItem(TOKEN_KEY);
      return true;
    } catch (err) {
      session = null;
      who.textContent = err.status === 401 ? "a token is needed" : `error: ${err.message}`;
      return false;
    }
  }
  function setupSession() {
    const form = document.getElementById("session");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const input = document.getElementById("token");
      const value = input.value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
      input.value = "";
      await route();
    });
    document.getElementById("token-forget").addEventListener("click", async () => {
      sessionStorage.removeItem(TOKEN_KEY);
      await route();
    });
  }
  function errorBox(err) {
    const box = el("div", {class: "error", role: "alert"}, err.message || String(err));
    if (err.status === 401) box.appendChild(el("div", {}, "Enter a bearer token at the top right."));
    return box;
  }

  // -- routing -----------------------------------------------------------------------------
  function stopRefresh() { if (timer) { clearTimeout(timer); timer = null; } }
  function every(ms, fn, mine) {
    const tick = async () => {
      if (mine !== generation) return;
      if (!document.hidden) { try { await fn(); } catch (_) { /* shown by fn */ } }
      if (mine === generation) timer = setTimeout(tick, ms);
    };
    timer = setTimeout(tick, ms);
  }
  async function route() {
    stopRefresh();
    const mine = ++generation;
    const ok = await loadSession();
    if (mine !== generation) return;
    const hash = location.hash || "#/";
    const m = hash.match(/^#\/jobs\/(.+)$/);
    if (!ok) {
      show(el("h1", {}, "paramsched"),
           errorBox(new ApiError(401, {error: {message: "This server needs a bearer token."}})));
      return;
    }
    if (m) await jobPage(decodeURIComponent(m[1]), mine);
    else await jobsPage(mine);
  }

  // -- the jobs page -------------------------------------------------------------------------
  const listState = {prefix: "", pages: [""], page: 0};

  function stateBadge(job) {
    const label = {running: "running", waiting: "waiting for decision", finished: "finished",
                   fenced: "fenced ranks", new: "not started"}[job.state] || job.state;
    return el("span", {class: `badge state-${job.state}`, title: job.state_detail || null}, label);
  }
  function valuesText(values) {
    return values.map((g, i) => `g${i} ` + Object.entries(g).map(([p, v]) => `${p}=${fmt(num(v))}`)
      .join(" ")).join("\n");
  }
  function progressCell(job) {
    const p = job.progress;
    const frac = job.max_iters ? Math.min(1, p.max / job.max_iters) : 0;
    return el("td", {},
      el("progress", {max: 1, value: frac.toFixed(4)}), " ",
      `${p.max} / ${job.max_iters}`);
  }
  function ranksCell(job) {
    const p = job.progress;
    const size = job.world_size || "?";
    const text = p.reported ? `${p.reported}/${size} · ${p.min}–${p.max}` : `0/${size}`;
    return el("td", {class: "num", title: job.ranks.map((r) => `rank ${r.rank}: ${r.iteration}`).join("\n")},
              text, p.reported > 1 ? el("div", {class: "muted"}, `spread ${p.spread}`) : null);
  }
  function changeCell(job) {
    const c = job.last_change;
    if (!c) return el("td", {class: "muted"}, "none");
    const what = c.mode === "stretch" ? `stretch to ${c.max_iters}` : `${c.mode} ${c.params.join(",")}`;
    return el("td", {}, `#${c.number} ${what}`, el("div", {class: "muted"}, `from iteration ${c.from_iteration}`));
  }
  function jobRow(job) {
    const current = job.current;
    const values = current.values.length ? valuesText(current.values)
      : (current.waits_for_epoch !== null ? `waiting for epoch ${current.waits_for_epoch}` : "-");
    return el("tr", {class: "job", "data-job-id": job.job_id, "data-state": job.state},
      el("td", {class: "id"}, el("a", {href: jobHref(job.job_id), class: "job-link"}, job.job_id)),
      el("td", {}, stateBadge(job)),
      progressCell(job),
      ranksCell(job),
      el("td", {class: "num"}, job.generation),
      el("td", {class: "values"}, values.split("\n").map((line) => el("div", {}, line))),
      changeCell(job),
      el("td", {class: "muted"}, when(job.created_at)));
  }

  async function jobsPage(mine) {
    const filter = el("input", {type: "search", id: "prefix", placeholder: "job id prefix",
                                value: listState.prefix, "aria-label": "filter by job id prefix"});
    const live = el("input", {type: "checkbox", id: "live", checked: true});
    const stamp = el("span", {class: "muted", id: "updated"});
    const table = el("table", {id: "jobs"});
    const pager = el("div", {class: "pager"});
    const message = el("div", {});
    show(el("h1", {}, "Jobs"),
         el("div", {class: "toolbar"}, filter, el("label", {}, live, " live refresh"), stamp),
         message, table, pager);
    let debounce = null;
    filter.addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        listState.prefix = filter.value; listState.pages = [""]; listState.page = 0; refresh();
      }, 250);
    });
    async function refresh() {
      const q = new URLSearchParams({prefix: listState.prefix, page_size: String(PAGE_SIZE),
                                     page_token: listState.pages[listState.page]});
      let data;
      try {
        data = await api("/api/v1/jobs?" + q.toString());
      } catch (err) {
        if (mine === generation) message.replaceChildren(errorBox(err));
        return;
      }
      if (mine !== generation) return;
      message.replaceChildren();
      const head = el("tr", {}, ["Job", "State", "Progress", "Ranks", "Gen", "Current values",
                                 "Last change", "Created"].map((h) => el("th", {}, h)));
      const rows = data.jobs.map(jobRow);
      table.replaceChildren(el("thead", {}, head), el("tbody", {}, rows));
      if (!rows.length) {
        message.replaceChildren(el("p", {class: "muted"},
          listState.prefix ? `No job id starts with “${listState.prefix}”.` : "No jobs yet."));
      }
      const prev = el("button", {type: "button", disabled: listState.page === 0,
                                 onclick: () => { listState.page--; refresh(); }}, "Previous");
      const next = el("button", {type: "button", disabled: !data.next_page_token,
                                 onclick: () => {
                                   listState.pages[listState.page + 1] = data.next_page_token;
                                   listState.page++; refresh();
                                 }}, "Next");
      pager.replaceChildren(prev, el("span", {class: "muted"}, `page ${listState.page + 1}`), next);
      stamp.textContent = "updated " + new Date().toLocaleTimeString();
    }
    await refresh();
    every(LIST_REFRESH_MS, async () => { if (live.checked) await refresh(); }, mine);
  }

  // -- a job's page ----------------------------------------------------------------------------
  function fact(name, value) { return el("div", {}, el("b", {}, name), value); }

  function marksOf(job, history) {
    const marks = [];
    if (job.epoch_length && job.max_iters / job.epoch_length <= 200) {
      for (let x = job.epoch_length; x < job.max_iters; x += job.epoch_length) marks.push({x, kind: "epoch"});
    }
    (job.changes || []).forEach((c, i) => marks.push({x: c.from_iteration, kind: "change",
                                                      label: `change #${i + 1}`}));
    for (const e of history) {
      if ((e.action === "resume" || e.action === "start_over") && e.generation === job.generation) {
        marks.push({x: e.iteration, kind: "resume", label: e.action === "resume" ? "resumed" : "started over"});
      }
    }
    marks.push({x: job.issued_until, kind: "issued", label: "handed out ⟂ planned"});
    marks.push({x: job.max_iters, kind: "end", label: "end"});
    return marks;
  }

  function legend(items) {
    return el("div", {class: "legend"}, items.map(([cls, text, dashed]) =>
      el("span", {}, el("span", {class: `key ${cls}${dashed ? " dashed" : ""}`}), text)));
  }

  function chartsOf(job, values, history) {
    const cards = [];
    for (const param of values.params) {
      const series = [];
      for (let g = 0; g < values.num_groups; g++) {
        series.push({group: g, cls: `c${g % 8}`, label: `group ${g}`, iterations: values.iterations,
                     values: values.values[param][g].map(num), splitAt: job.issued_until});
      }
      const chart = window.PSChart.draw({
        param, title: `${param} per param group`, series, marks: marksOf(job, history),
        xmin: 0, xmax: job.max_iters,
        waitingFrom: values.waits_for_epoch !== null && values.iterations.length
          ? values.iterations[values.iterations.length - 1] + 1 : null,
        waitingLabel: values.waits_for_epoch !== null
          ? `waiting for the validation decision of epoch ${values.waits_for_epoch}` : null,
      });
      const keys = series.map((s) => [s.cls, s.label]);
      keys.push(["mk-issued", "handed out (solid) · planned (dashed)", true],
                ["mk-change", "change", true], ["mk-resume", "resume", true],
                ["mk-epoch", "epoch"], ["mk-end", "end of training"]);
      cards.push(el("div", {class: "chart-card", "data-param": param},
        el("h3", {}, param), chart, legend(keys),
        values.step > 1 ? el("div", {class: "muted"}, `every ${values.step}th iteration`) : null));
    }
    return el("div", {class: "charts", id: "charts"}, cards);
  }

  function ranksTable(job) {
    const leader = job.progress.max;
    const rows = job.ranks.map((r) => el("tr", {"data-rank": r.rank},
      el("td", {class: "num"}, r.rank), el("td", {class: "num"}, r.iteration),
      el("td", {class: "num"}, leader - r.iteration)));
    if (!rows.length) rows.push(el("tr", {}, el("td", {colspan: 3, class: "muted"}, "no rank has reported yet")));
    return el("table", {id: "ranks"},
      el("thead", {}, el("tr", {}, el("th", {class: "num"}, "Rank"), el("th", {class: "num"}, "Iteration done"),
                              el("th", {class: "num"}, "Behind the leader"))),
      el("tbody", {}, rows));
  }

  function aroundText(before, after) {
    const lines = [];
    const n = Math.max(before.length, after.length);
    for (let g = 0; g < n; g++) {
      const b = before[g] || {}, a = after[g] || {};
      const names = [...new Set([...Object.keys(b), ...Object.keys(a)])];
      if (!names.length) continue;
      lines.push(`g${g} ` + names.map((p) => `${p} ${p in b ? fmt(num(b[p])) : "-"} → ${p in a ? fmt(num(a[p])) : "-"}`).join(", "));
    }
    return lines;
  }
  function detailsText(details) {
    if (details === null || details === undefined) return "";
    if (typeof details !== "object") return String(details);
    const shown = {};
    for (const [k, v] of Object.entries(details)) {
      if (k === "resolved" || v === null || (Array.isArray(v) && !v.length) ||
          (typeof v === "object" && !Array.isArray(v) && !Object.keys(v).length) || v === "") continue;
      shown[k] = v;
    }
    return Object.keys(shown).length ? JSON.stringify(shown) : "";
  }
  function auditTable(history) {
    const rows = history.slice().reverse().map((e) => el("tr", {class: "audit", "data-action": e.action},
      el("td", {class: "muted when"}, when(e.time)),
      el("td", {}, e.principal),
      el("td", {}, e.action),
      el("td", {class: "num"}, e.iteration),
      el("td", {class: "num"}, e.generation),
      el("td", {class: "values"}, aroundText(e.before, e.after).map((l) => el("div", {}, l))),
      el("td", {}, el("div", {class: "reason"}, e.reason),
         el("div", {class: "details"}, detailsText(e.details)))));
    if (!rows.length) rows.push(el("tr", {}, el("td", {colspan: 7, class: "muted"}, "no entries")));
    return el("table", {id: "audit"},
      el("thead", {}, el("tr", {}, ["When", "Who", "What", "Iteration", "Gen", "Before → after",
                                     "Reason · details"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows));
  }

  async function jobPage(jobId, mine) {
    const header = el("div", {id: "job-header"});
    const charts = el("div", {});
    const ranks = el("div", {});
    const audit = el("div", {});
    const changeArea = el("div", {});
    const message = el("div", {});
    show(el("p", {}, el("a", {href: "#/"}, "← all jobs")),
         el("h1", {id: "job-title"}, jobId), message, header,
         el("h2", {}, "Curves"), charts, changeArea,
         el("h2", {}, "Ranks"), ranks, el("h2", {}, "Audit trail"), audit);
    const cache = {key: null, values: null, history: []};
    async function refresh(force) {
      let job;
      try {
        job = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}`);
      } catch (err) {
        if (mine !== generation) return;
        if (cache.key === null) {  // nothing to show of this job: only the reason
          show(el("p", {}, el("a", {href: "#/"}, "← all jobs")), el("h1", {}, jobId), errorBox(err));
        } else {
          message.replaceChildren(errorBox(err));
        }
        return;
      }
      if (mine !== generation) return;
      message.replaceChildren();
      const key = [job.incarnation, job.generation, job.num_changes, job.max_iters].join("/");
      if (force || key !== cache.key || (cache.values && cache.values.waits_for_epoch !== null)) {
        const q = `/api/v1/jobs/${encodeURIComponent(jobId)}`;
        const [values, history] = await Promise.all([api(q + `/values?points=${CHART_POINTS}`), api(q + "/history")]);
        if (mine !== generation) return;
        Object.assign(cache, {key, values, history: history.entries});
        audit.replaceChildren(auditTable(cache.history));
      }
      cache.job = job;
      header.replaceChildren(el("div", {class: "facts"},
        fact("state", el("span", {}, stateBadge(job), " ", job.state_detail)),
        fact("iteration", (job.ranks.length ? `${job.progress.max} of ${job.max_iters}`
                                            : `no rank has reported in generation ${job.generation}; ${job.max_iters} in all`) +
             (job.epoch_length ? ` (epoch length ${job.epoch_length})` : "")),
        fact("generation", String(job.generation)),
        fact("handed out until", String(job.issued_until)),
        fact("ranks", `${job.progress.reported} of ${job.world_size || "?"}, spread ${job.progress.spread}`),
        fact("changes", String(job.num_changes)),
        fact("run", job.run_id || "-"),
        fact("incarnation", job.incarnation || "-"),
        fact("created", when(job.created_at)),
        fact(`values at iteration ${job.current.iteration}`, el("div", {class: "values"},
          valuesText(job.current.values).split("\n").map((l) => el("div", {}, l))))));
      charts.replaceChildren(chartsOf(job, cache.values, cache.history));
      ranks.replaceChildren(ranksTable(job));
      if (session && session.admin && !changeArea.firstChild) changeArea.appendChild(changeForm(job, cache, refresh));
    }
    await refresh(true);
    every(JOB_REFRESH_MS, () => refresh(false), mine);
  }

  // -- the change preview (admins) ---------------------------------------------------------------
  function changeForm(job, cache, refresh) {
    const field = (name, label, attrs) => el("label", {"data-field": name, class: "field"}, label,
      el("input", Object.assign({name, type: "number", step: "any"}, attrs || {})));
    const kind = el("select", {name: "kind", id: "change-kind"},
                    CHANGE_KINDS.map((k) => el("option", {value: k}, k)));
    // The scheduled params first, then any other numeric param_groups key (a change may
    // set one that was never scheduled, e.g. weight_decay).
    const keys = [...job.params];
    for (const group of (job.spec && job.spec.initial_values) || []) {
      for (const [k, v] of Object.entries(group)) if (typeof v === "number" && !keys.includes(k)) keys.push(k);
    }
    const param = el("select", {name: "param", id: "change-param"},
                     keys.map((p) => el("option", {value: p}, p)));
    const fields = {
      value: field("value", "value"), factor: field("factor", "factor", {min: "0"}),
      to: field("to", "to"), over: field("over", "over iterations", {min: "1", step: "1"}),
      shape: el("label", {"data-field": "shape", class: "field"}, "shape",
                el("select", {name: "shape"}, el("option", {value: "cosine"}, "cosine"),
                   el("option", {value: "linear"}, "linear"))),
      from_factor: field("from_factor", "from factor", {min: "0"}),
      max_iters: field("max_iters", "new length (iterations)", {min: "1", step: "1"}),
    };
    const needs = {set: ["value"], scale: ["factor"], hold: [], decay: ["to", "over", "shape"],
                   rewarm: ["from_factor", "over"], extend: ["max_iters"]};
    const groups = el("input", {name: "groups", type: "text", placeholder: "all", id: "change-groups"});
    const from = el("input", {name: "from_iteration", type: "number", min: "0", step: "1",
                              placeholder: "earliest", id: "change-from"});
    const reason = el("input", {name: "reason", type: "text", class: "reason", id: "change-reason",
                                maxlength: "4096", placeholder: "why (kept in the audit trail)"});
    const force = el("input", {type: "checkbox", name: "force", id: "change-force"});
    const preview = el("button", {type: "button", class: "primary", id: "change-preview"}, "Preview");
    const apply = el("button", {type: "button", class: "danger", id: "change-apply", disabled: true}, "Apply");
    const result = el("div", {id: "change-result"});
    const paramLabel = el("label", {"data-field": "param"}, "param", param);
    const form = el("form", {class: "change-form", id: "change-form", autocomplete: "off"},
      el("div", {class: "row"}, el("label", {}, "change", kind), paramLabel, Object.values(fields)),
      el("div", {class: "row"}, el("label", {}, "groups (e.g. 0,2)", groups),
         el("label", {}, "from iteration", from), el("label", {}, "reason", reason),
         el("label", {class: "inline"}, force, "force (past max_jump_factor)")),
      el("div", {class: "row"}, preview, apply), result);
    let previewed = null;
    function sync() {
      const k = kind.value;
      for (const [name, node] of Object.entries(fields)) node.classList.toggle("hidden", !needs[k].includes(name));
      paramLabel.classList.toggle("hidden", k === "extend");
      apply.disabled = true; previewed = null;
    }
    function body(dryRun) {
      const k = kind.value;
      const data = {kind: k, dry_run: dryRun, force: force.checked, reason: reason.value};
      if (k !== "extend") data.param = param.value;
      for (const name of needs[k]) {
        const input = fields[name].querySelector("input, select");
        if (name === "shape") data.shape = input.value;
        else if (input.value !== "") data[name] = Number(input.value);
      }
      if (groups.value.trim()) data.groups = groups.value.split(",").map((s) => Number(s.trim()));
      if (from.value !== "") data.from_iteration = Number(from.value);
      return data;
    }
    form.addEventListener("input", () => { apply.disabled = true; previewed = null; });
    kind.addEventListener("change", sync);
    form.addEventListener("submit", (ev) => ev.preventDefault());
    preview.addEventListener("click", async () => {
      const data = body(true);
      result.replaceChildren(el("p", {class: "muted"}, "computing the dry run…"));
      try {
        const answer = await api(`/api/v1/jobs/${encodeURIComponent(job.job_id)}/changes`, data);
        previewed = JSON.stringify(Object.assign({}, data, {dry_run: false}));
        result.replaceChildren(previewView(answer, cache, data));
        apply.disabled = false;
      } catch (err) {
        result.replaceChildren(refusal(err));
      }
    });
    apply.addEventListener("click", async () => {
      const data = body(false);
      if (previewed !== JSON.stringify(data)) { apply.disabled = true; return; }
      if (!data.reason.trim()) {
        result.prepend(el("div", {class: "error", role: "alert"}, "Give a reason: it goes into the audit trail."));
        return;
      }
      apply.disabled = true;
      try {
        const answer = await api(`/api/v1/jobs/${encodeURIComponent(job.job_id)}/changes`, data);
        result.replaceChildren(el("div", {class: "notice", id: "change-applied"},
          `Applied: ${answer.entry.action} from iteration ${answer.from_iteration} ` +
          `(change #${answer.job.num_changes}).`));
        previewed = null;
        await refresh(true);
      } catch (err) {
        result.replaceChildren(refusal(err));
      }
    });
    sync();
    return el("section", {id: "change"}, el("h2", {}, "Change preview"), form);
  }

  function refusal(err) {
    const box = el("div", {class: "error", role: "alert", id: "change-error"},
                   `Refused (${err.code}${err.field ? ", " + err.field : ""}): ${err.message}`);
    if (err.field === "force") box.appendChild(el("div", {}, "Tick “force” to apply it anyway."));
    return box;
  }

  function previewView(answer, cache, data) {
    const s = answer.from_iteration;
    const before = answer.before, after = answer.after;
    const cards = [];
    const past = cache.values;
    const xmax = Math.max(answer.job.max_iters, after.max_iters || 0, before.max_iters || 0);
    for (const param of after.params) {
      const series = [];
      for (let g = 0; g < after.num_groups; g++) {
        if (past && past.values[param]) {
          const its = [], vals = [];
          past.iterations.forEach((it, i) => { if (it <= s) { its.push(it); vals.push(num(past.values[param][g][i])); } });
          series.push({group: g, cls: `c${g % 8}`, kind: "past", label: `group ${g} so far`, iterations: its, values: vals});
        }
        if (before.values[param]) {
          series.push({group: g, cls: `c${g % 8}`, kind: "before", label: `group ${g} before`,
                       iterations: before.iterations, values: before.values[param][g].map(num)});
        }
        series.push({group: g, cls: `c${g % 8}`, kind: "after", label: `group ${g} after`,
                     iterations: after.iterations, values: after.values[param][g].map(num)});
      }
      // Zoomed on the change: some of the past for context, then the rest of training.
      const xmin = Math.max(0, s - Math.max(10, Math.round((xmax - s) / 2)));
      const chart = window.PSChart.draw({param, title: `${param}: before and after`, series,
        marks: [{x: s, kind: "from", label: `from ${s}`}, {x: xmax, kind: "end", label: "end"}],
        xmin, xmax});
      cards.push(el("div", {class: "chart-card preview", "data-param": param}, el("h3", {}, `${param}: ${data.kind}`),
        chart, legend([["mk-before", "before (dashed)", true], ["c0", "after (solid)"], ["mk-change", "takes effect"]])));
    }
    const short = after.stop <= xmax ? el("div", {class: "muted"},
      `The dry run covers iterations ${s} to ${after.stop - 1}` +
      (after.waits_for_epoch !== null ? ` (then a validation decision of epoch ${after.waits_for_epoch} is due)`
                                      : " (at most 100,000 iterations)")) : null;
    return el("div", {id: "change-preview-result"},
      el("div", {class: "notice"}, `Dry run: ${data.kind} from iteration ${s}; nothing changed yet. `,
         aroundText(answer.entry.before, answer.entry.after).join("; ")), short,
      el("div", {class: "charts"}, cards));
  }

  // -- start ---------------------------------------------------------------------------------
  window.addEventListener("hashchange", route);
  document.addEventListener("DOMContentLoaded", () => { setupSession(); route(); });
})();
