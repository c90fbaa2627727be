// The splitproxy dashboard: polls the admin API of the listener that served it and draws it.
// Everything from the API goes into the page as text (textContent / append of strings), never
// as HTML. Requests go to relative URLs only, so the token never leaves this origin.
"use strict";

(() => {
  const TOKEN_KEY = "splitproxy.adminToken";
  const POLL_MS = 1500;
  const KEEP = 240; // points kept per chart: 6 minutes at one poll per 1.5 s
  const COMMANDS = ["promote", "rollback", "pause", "resume", "retry"];
  const SVG = "http://www.w3.org/2000/svg";
  // routes drawn at once: the status API pages them (a config may hold 10,000 routes, and
  // each card draws four charts); the bar under the header pages through them and filters
  const PAGE_SIZE = 100;

  let token = sessionStorage.getItem(TOKEN_KEY);
  let waitingForToken = false;
  let timer = null;
  let ledgerKey = "";
  let offset = 0; // the first route shown, within the routes matching the filter
  let filter = ""; // a part of a route's name, as the status API's ?route= takes it
  let matched = 0; // how many routes match the filter (the last answer's page.matched)
  const cards = new Map(); // route name -> its elements
  const series = new Map(); // route name -> the values seen at each poll

  // --- small helpers ----------------------------------------------------------------------

  function el(tag, cls, ...children) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : String(c)); // strings become text nodes
    }
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function word(value) {
    // a class name from an API word: letters, digits and "-" only
    return String(value).toLowerCase().replace(/[^a-z0-9]+/g, "-");
  }

  function num(value, digits = 2) {
    if (value === null || value === undefined) return "–";
    return Number(value).toFixed(digits).replace(/\.?0+$/, "") || "0";
  }

  function pct(fraction) {
    return fraction === null || fraction === undefined ? "–" : num(fraction * 100, 2) + "%";
  }

  function clock(unix) {
    return unix ? new Date(unix * 1000).toLocaleTimeString() : "–";
  }

  function valueIn(unit, value) {
    if (value === null || value === undefined) return "–";
    if (unit === "fraction") return pct(value);
    if (unit === "seconds") return num(value * 1000, 1) + " ms";
    if (unit === "per_second") return num(value, 2) + "/s";
    return num(value, 4);
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // --- the admin API ----------------------------------------------------------------------

  async function api(path, method = "GET", body = undefined) {
    if (!path.startsWith("/api/")) throw new Error("only this listener's API is called");
    const headers = { Accept: "application/json" };
    const sent = token; // the token this request carries (null: none)
    if (sent) headers.Authorization = "Bearer " + sent;
    const init = { method, headers, credentials: "omit", cache: "no-store", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let data = null;
    try {
      data = await resp.json();
    } catch {
      data = null;
    }
    if (resp.status === 401) {
      // Only a refusal of the token in use asks again: a request sent before the user gave
      // one (the poll's two requests go out together, and the second's 401 may come back
      // after the form was submitted) must not wipe the token given since.
      if (token === sent) askForToken(sent ? "That token was refused." : "");
      throw new ApiError(401, "a token is needed");
    }
    if (!resp.ok) {
      const message = data && data.error ? data.error.message : resp.statusText;
      throw new ApiError(resp.status, message);
    }
    return data;
  }

  function askForToken(problem) {
    waitingForToken = true;
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    const form = document.getElementById("auth");
    document.getElementById("auth-error").textContent = problem;
    if (form.hidden) {
      form.hidden = false;
      document.getElementById("token").focus();
    }
    setConnection("waiting for the admin token", false);
  }

  function onTokenSubmit(event) {
    event.preventDefault();
    const input = document.getElementById("token");
    const given = input.value.trim();
    if (!given) return;
    token = given;
    sessionStorage.setItem(TOKEN_KEY, given);
    input.value = "";
    document.getElementById("auth").hidden = true;
    waitingForToken = false;
    schedule(0);
  }

  function setConnection(text, ok) {
    const conn = document.getElementById("conn");
    conn.textContent = text;
    conn.className = ok ? "conn ok" : "conn bad";
  }

  // --- polling ----------------------------------------------------------------------------

  function schedule(delay) {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(poll, delay);
  }

  async function poll() {
    timer = null;
    if (waitingForToken) return;
    try {
      const [status, ledger] = await Promise.all([
        api(statusPath()),
        api("/api/v1/events?limit=100"),
      ]);
      renderStatus(status);
      renderLedger(ledger.events);
      setConnection("updated " + new Date().toLocaleTimeString(), true);
    } catch (err) {
      if (err.status !== 401) setConnection("admin API: " + err.message, false);
    }
    if (!waitingForToken) schedule(POLL_MS);
  }

  function statusPath() {
    const query = new URLSearchParams({ offset: String(offset), limit: String(PAGE_SIZE) });
    if (filter) query.set("route", filter);
    return "/api/v1/status?" + query.toString();
  }

  function turnPage(delta) {
    offset = Math.max(0, offset + delta * PAGE_SIZE);
    schedule(0);
  }

  function onFilterInput(event) {
    filter = event.target.value.trim();
    offset = 0;
    schedule(150); // typing: wait for a pause before asking
  }

  function renderPage(status) {
    const page = status.page || { matched: status.routes.length, returned: status.routes.length };
    matched = page.matched;
    if (offset > 0 && offset >= matched) {
      // the routes shrank under this page (a reload, a narrower filter): back to the last page
      offset = Math.max(0, Math.floor((matched - 1) / PAGE_SIZE) * PAGE_SIZE);
      schedule(0);
    }
    const total = status.route_count === undefined ? matched : status.route_count;
    let info;
    if (!matched) info = filter ? "no route's name contains " + JSON.stringify(filter) : "";
    else info = "routes " + (offset + 1) + "–" + (offset + page.returned) + " of " + matched;
    if (matched && filter) info += " matching (" + total + " in all)";
    document.getElementById("page-info").textContent = info;
    document.getElementById("page-prev").disabled = offset === 0;
    document.getElementById("page-next").disabled = offset + page.returned >= matched;
    // the bar is in the way only when everything fits on one page and nothing is filtered
    document.getElementById("routes-bar").hidden = total <= PAGE_SIZE && !filter;
  }

  async function command(name, verb, card) {
    for (const b of card.buttons) b.disabled = true;
    card.result.textContent = verb + "…";
    try {
      const view = await api(
        "/api/v1/routes/" + encodeURIComponent(name) + "/" + verb,
        "POST",
        { reason: "from the dashboard" },
      );
      const phase = view.rollout ? view.rollout.phase : "–";
      card.result.textContent = verb + ": done, phase " + phase;
      card.result.className = "result";
    } catch (err) {
      card.result.textContent = verb + " refused: " + err.message;
      card.result.className = "result error";
    } finally {
      for (const b of card.buttons) b.disabled = false;
    }
    schedule(0);
  }

  // --- a route ----------------------------------------------------------------------------

  function chartBox(title, legend) {
    const svg = svgEl("svg", { viewBox: "0 0 300 90", role: "img", class: "chart" });
    const box = el("figure", "chart-box", el("figcaption", null, title));
    box.append(svg);
    if (legend) {
      box.append(
        el("span", "legend", el("span", "key stable", "stable"), " ", el("span", "key candidate", "candidate")),
      );
    }
    return { box, svg };
  }

  function makeCard(name) {
    const root = el("section", "route");
    root.dataset.route = name;
    const title = el("h2", null, el("span", "name", name));
    const phase = el("span", "phase");
    const strategy = el("span", "strategy");
    title.append(" ", phase, " ", strategy);
    const facts = el("dl", "facts");
    const plan = el("ol", "plan");
    const actions = el("div", "actions");
    const buttons = COMMANDS.map((verb) => {
      const b = el("button", "cmd cmd-" + verb, verb);
      b.type = "button";
      b.dataset.command = verb;
      b.addEventListener("click", () => command(name, verb, card));
      actions.append(b);
      return b;
    });
    const result = el("span", "result");
    actions.append(result);
    const weight = chartBox("candidate weight (%) over time", false);
    const rate = chartBox("requests / s", true);
    const errors = chartBox("error rate (%)", true);
    const p99 = chartBox("p99 latency (ms)", true);
    const charts = el("div", "charts");
    charts.append(weight.box, rate.box, errors.box, p99.box);
    const checksTitle = el("h3", null, "checks of the latest tick");
    const checks = el("table", "checks");
    root.append(title, facts, plan, actions, charts, checksTitle, checks);
    const card = {
      root, phase, strategy, facts, plan, actions, buttons, result, checksTitle, checks,
      charts: { weight: weight.svg, rate: rate.svg, errors: errors.svg, p99: p99.svg },
      traffic: { rate: rate.box, errors: errors.box, p99: p99.box },
    };
    return card;
  }

  function fact(dl, term, value) {
    dl.append(el("dt", null, term), el("dd", null, value));
  }

  function remember(route, now) {
    let s = series.get(route.name);
    if (!s) {
      s = [];
      series.set(route.name, s);
    }
    const t = route.traffic;
    const pick = (v, f) => (v ? f(v) : null);
    s.push({
      t: now,
      weight: route.weight.effective,
      rate: { stable: t.stable.rate, candidate: pick(t.candidate, (c) => c.rate) },
      errors: {
        stable: t.stable.error_rate === null ? null : t.stable.error_rate * 100,
        candidate: pick(t.candidate, (c) => (c.error_rate === null ? null : c.error_rate * 100)),
      },
      p99: {
        stable: t.stable.latency_ms.p99,
        candidate: pick(t.candidate, (c) => c.latency_ms.p99),
      },
    });
    if (s.length > KEEP) s.splice(0, s.length - KEEP);
    return s;
  }

  function renderRoute(card, route, now) {
    const r = route.rollout;
    const phase = r ? r.phase : "no rollout";
    card.phase.textContent = phase;
    card.phase.className = "phase phase-" + word(phase);
    card.strategy.textContent = r ? r.strategy : "";
    card.root.dataset.phase = phase;

    clear(card.facts);
    const w = route.weight;
    fact(card.facts, "weight", num(w.effective) + "% to the candidate");
    fact(card.facts, "set by", w.source + (w.runtime ? " (" + w.runtime.source + ")" : ""));
    fact(card.facts, "stable", (route.stable.revision || "–") + "  " + route.stable.urls.join(", "));
    if (route.candidate) {
      fact(card.facts, "candidate", (route.candidate.revision || "–") + "  " + route.candidate.urls.join(", "));
    }
    if (r) {
      fact(card.facts, "step", r.step + " of " + r.steps);
      if (r.bluegreen) fact(card.facts, "stage", r.bluegreen.stage);
      if (r.waiting_for) fact(card.facts, "waiting for", r.waiting_for);
      if (r.paused_reason) fact(card.facts, "paused", r.paused_reason);
      fact(card.facts, "failures", r.failures + " of " + r.failure_limit);
      fact(card.facts, "window", r.window.requests + " candidate requests"
        + (r.min_requests ? " (needs " + r.min_requests + ")" : ""));
    }

    clear(card.plan);
    if (r) {
      r.weights.forEach((weight, i) => {
        const label = weight === null ? "pause" : num(weight) + "%";
        const cls = i + 1 < r.step ? "done" : i + 1 === r.step ? "current" : "todo";
        card.plan.append(el("li", cls, label));
      });
    }
    card.actions.hidden = !r;

    const s = remember(route, now);
    drawChart(card.charts.weight, s, [["candidate", (p) => p.weight]], 100);
    drawChart(card.charts.rate, s, versions((p) => p.rate), null);
    drawChart(card.charts.errors, s, versions((p) => p.errors), null);
    drawChart(card.charts.p99, s, versions((p) => p.p99), null);

    renderChecks(card, r ? r.checks : []);
  }

  function versions(get) {
    return [
      ["stable", (p) => get(p).stable],
      ["candidate", (p) => get(p).candidate],
    ];
  }

  function renderChecks(card, checks) {
    clear(card.checks);
    card.checksTitle.hidden = checks.length === 0;
    if (checks.length) card.checks.append(checksTable(checks));
  }

  function threshold(check) {
    const parts = [];
    if (check.min !== null && check.min !== undefined) parts.push("≥ " + valueIn(check.unit, check.min));
    if (check.max !== null && check.max !== undefined) parts.push("≤ " + valueIn(check.unit, check.max));
    return parts.join(", ") || "–";
  }

  function checksTable(checks) {
    const body = document.createDocumentFragment();
    const head = el("tr");
    for (const h of ["check", "kind", "value", "threshold", "sample", "verdict", "detail"]) {
      head.append(el("th", null, h));
    }
    body.append(head);
    for (const c of checks) {
      const row = el("tr", "check");
      row.append(
        el("td", null, c.name),
        el("td", null, c.kind),
        el("td", "numeric", valueIn(c.unit, c.value)),
        el("td", "numeric", threshold(c)),
        el("td", "numeric", c.sample),
        el("td", "verdict verdict-" + word(c.verdict), c.verdict),
        el("td", "detail", c.detail),
      );
      body.append(row);
    }
    return body;
  }

  // --- charts: plain SVG, one polyline per version, gaps where there is no value ----------

  function drawChart(svg, points, lines, fixedMax) {
    clear(svg);
    const W = 300, H = 90, L = 34, T = 6, B = 12;
    let max = fixedMax || 0;
    if (!fixedMax) {
      for (const p of points) {
        for (const [, get] of lines) {
          const v = get(p);
          if (v !== null && v !== undefined && v > max) max = v;
        }
      }
      max = max > 0 ? max * 1.15 : 1;
    }
    const t0 = points.length ? points[0].t : 0;
    const t1 = points.length ? points[points.length - 1].t : 1;
    const span = Math.max(t1 - t0, 1);
    const x = (t) => L + ((t - t0) / span) * (W - L - 2);
    const y = (v) => T + (1 - v / max) * (H - T - B);
    svg.append(svgEl("line", { x1: L, y1: y(0), x2: W, y2: y(0), class: "axis" }));
    svg.append(svgEl("line", { x1: L, y1: T, x2: L, y2: y(0), class: "axis" }));
    const top = svgEl("text", { x: L - 3, y: T + 7, class: "tick", "text-anchor": "end" });
    top.textContent = num(max, 1);
    const zero = svgEl("text", { x: L - 3, y: y(0), class: "tick", "text-anchor": "end" });
    zero.textContent = "0";
    const ago = svgEl("text", { x: L, y: H - 1, class: "tick" });
    ago.textContent = points.length > 1 ? "-" + Math.round(span) + " s" : "";
    svg.append(top, zero, ago);
    for (const [name, get] of lines) {
      let run = [];
      const flush = () => {
        if (run.length === 1) {
          const [px, py] = run[0].split(",");
          svg.append(svgEl("circle", { cx: px, cy: py, r: 1.8, class: "dot " + name }));
        } else if (run.length > 1) {
          svg.append(svgEl("polyline", { points: run.join(" "), class: "line " + name }));
        }
        run = [];
      };
      for (const p of points) {
        const v = get(p);
        if (v === null || v === undefined) {
          flush();
        } else {
          run.push(x(p.t).toFixed(1) + "," + y(Math.min(v, max)).toFixed(1));
        }
      }
      flush();
    }
  }

  // --- the whole page ---------------------------------------------------------------------

  function renderStatus(status) {
    document.getElementById("meta").textContent =
      "v" + status.version + " · config " + status.config.revision
      + (status.draining ? " · draining" : "")
      + (status.config.last_error ? " · last reload failed: " + status.config.last_error : "");
    const notice = document.getElementById("notice");
    const none = !status.routes.length && !filter && !(status.route_count > 0);
    notice.textContent = none ? "No routes are configured." : "";
    renderPage(status);
    const now = Date.now() / 1000;
    const container = document.getElementById("routes");
    const seen = new Set();
    let position = 0;
    for (const route of status.routes) {
      seen.add(route.name);
      let card = cards.get(route.name);
      if (!card) {
        card = makeCard(route.name);
        cards.set(route.name, card);
      }
      // in the answer's order (the config's); a card already in its place is not moved
      const here = container.children[position] || null;
      if (here !== card.root) container.insertBefore(card.root, here);
      position += 1;
      renderRoute(card, route, now);
    }
    for (const [name, card] of cards) {
      if (!seen.has(name)) {
        card.root.remove();
        cards.delete(name);
        series.delete(name);
      }
    }
  }

  function renderLedger(events) {
    const last = events.length ? events[events.length - 1] : null;
    const key = events.length + ":" + (last ? last.at + last.kind + last.route : "");
    if (key === ledgerKey) return;
    ledgerKey = key;
    const tbody = document.querySelector("#ledger tbody");
    clear(tbody);
    if (!events.length) {
      const row = el("tr", null, el("td", "empty", "no events yet"));
      row.firstChild.colSpan = 8;
      tbody.append(row);
      return;
    }
    for (const e of [...events].reverse()) {
      const row = el("tr", "event event-" + word(e.kind));
      row.append(
        el("td", null, clock(e.at)),
        el("td", null, e.route),
        el("td", null, e.kind),
        el("td", null, e.previous && e.previous !== e.phase ? e.previous + " → " + e.phase : e.phase),
        el("td", "numeric", e.step),
        el("td", "numeric", e.weight === null ? "–" : num(e.weight) + "%"),
        el("td", null, e.source),
        el("td", "message", e.message + (e.trigger ? " [" + e.trigger + "]" : "")),
      );
      tbody.append(row);
      if (e.checks && e.checks.length) {
        const cell = el("td", "event-checks");
        cell.colSpan = 8;
        const table = el("table", "checks");
        table.append(checksTable(e.checks));
        cell.append(table);
        tbody.append(el("tr", "event-checks-row"));
        tbody.lastChild.append(cell);
      }
    }
  }

  document.getElementById("auth").addEventListener("submit", onTokenSubmit);
  document.getElementById("route-filter").addEventListener("input", onFilterInput);
  document.getElementById("page-prev").addEventListener("click", () => turnPage(-1));
  document.getElementById("page-next").addEventListener("click", () => turnPage(1));
  schedule(0);
})();
