// The registry's web UI: one ES module, no framework, no build step.
//
// Contract (registry/ui/API.md and the UI contract): every page is served as index.html under
// <prefix>/ui/; this module reads the JSON API under <prefix>/ui/api/v1 and renders the page
// the URL names. Data from the registry (names, tags, digests, annotations, history) only
// ever reaches the page as text nodes or attribute values, never as markup: the helper `h`
// below is the one way this file builds DOM, and nothing here assigns innerHTML.

// The prefix (http.prefix) is wherever this script was served from, minus /ui/assets/...:
// the server may rewrite asset names to hashed ones, never the directory.
const SCRIPT_PATH = new URL(import.meta.url).pathname;
const BASE = SCRIPT_PATH.slice(0, Math.max(0, SCRIPT_PATH.lastIndexOf("/ui/assets/")));
const UI = `${BASE}/ui`;
const API = `${UI}/api/v1`;
const TOKEN_KEY = "registry-ui-token"; // sessionStorage: gone when the tab closes
const FILTER_DEBOUNCE_MS = 250; // one catalog request per pause in typing, not per key
const STATUS_CLEAR_MS = 6000; // how long a "deleted"/"copied" message stays
const GC_POLL_MS = 2000; // the registry page re-reads /info this often while a GC runs
const TOTALS_POLL_MS = 1000; // ... and this often while the storage totals are being computed
const PAGE_SIZE = 100; // catalog rows per page (the API's default; max 1000)
const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

// ------------------------------------------------------------------------------ DOM helpers

/** Build an element. `attrs`: "class", "text" (textContent), "on<event>" (listener),
 * booleans (set when true), anything else via setAttribute. Children: nodes or strings
 * (strings become text nodes); null/undefined/false are skipped; arrays are flattened. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function link(href, ...children) {
  return h("a", { href }, ...children);
}

// ------------------------------------------------------------------------------ formatting

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** 1536 -> "1.5 KiB"; null -> "–". Binary units, as `du -h` and docker. */
function bytes(n) {
  if (n === null || n === undefined) return "–";
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const shown = unit === 0 ? String(value) : value.toFixed(value < 10 ? 1 : 0);
  return `${shown} ${UNITS[unit]}`;
}

function sizeNode(n) {
  return h("span", { class: "num", title: n === null || n === undefined ? null : `${n} bytes` },
    bytes(n));
}

function count(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en");
}

const RELATIVE = [
  [60, 1, "second"], [3600, 60, "minute"], [86400, 3600, "hour"],
  [86400 * 30, 86400, "day"], [86400 * 365, 86400 * 30, "month"], [Infinity, 86400 * 365, "year"],
];

/** An RFC 3339 time as <time>: relative text ("5 minutes ago"), the exact UTC time as title. */
function timeNode(iso) {
  if (!iso) return h("span", { class: "muted" }, "–");
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return h("span", {}, String(iso));
  const seconds = Math.round((Date.now() - when.getTime()) / 1000);
  let text = "just now";
  if (Math.abs(seconds) >= 5) {
    const ago = Math.abs(seconds);
    const [, step, unit] = RELATIVE.find(([limit]) => ago < limit);
    const n = Math.floor(ago / step);
    const words = `${n} ${unit}${n === 1 ? "" : "s"}`;
    text = seconds >= 0 ? `${words} ago` : `in ${words}`;
  }
  return h("time", { datetime: iso, title: when.toISOString().replace(".000Z", "Z") }, text);
}

function shortDigest(digest) {
  const [algo, hex] = String(digest).split(":");
  return hex ? `${algo}:${hex.slice(0, 12)}` : String(digest);
}

function digestNode(digest) {
  return h("code", { class: "digest", title: digest }, shortDigest(digest));
}

function platformText(p) {
  if (!p) return "–";
  return [p.os, p.architecture, p.variant].filter(Boolean).join("/") || "–";
}

// ------------------------------------------------------------------------------ URLs

function encodeName(name) {
  return String(name).split("/").map(encodeURIComponent).join("/");
}

const pageUrl = {
  repositories: (q = "", last = "", n = 0) => {
    const params = new URLSearchParams();
    if (q) params.set("q", q);
    if (last) params.set("last", last);
    if (n && n !== PAGE_SIZE) params.set("n", String(n));
    const query = params.toString();
    return `${UI}/${query ? `?${query}` : ""}`;
  },
  repository: (name) => `${UI}/repositories/${encodeName(name)}`,
  manifest: (name, digest) => `${UI}/repositories/${encodeName(name)}/manifests/${digest}`,
  registry: () => `${UI}/registry`,
};

/** The page a path names: {page, name?, digest?}; page "notfound" for anything else. */
function parseRoute(pathname) {
  if (pathname !== UI && !pathname.startsWith(`${UI}/`)) return { page: "notfound" };
  let rest = pathname.slice(UI.length).replace(/^\/+/, "");
  try {
    rest = rest.split("/").map(decodeURIComponent).join("/");
  } catch {
    return { page: "notfound" };
  }
  if (rest === "") return { page: "repositories" };
  if (rest === "registry" || rest === "registry/") return { page: "registry" };
  // Names may contain "manifests" as a component: match the digest from the right end.
  const manifest = /^repositories\/(.+)\/manifests\/([^/]+)$/.exec(rest);
  if (manifest && DIGEST_RE.test(manifest[2])) {
    return { page: "manifest", name: manifest[1], digest: manifest[2] };
  }
  const repo = /^repositories\/(.+?)\/?$/.exec(rest);
  if (repo) return { page: "repository", name: repo[1] };
  return { page: "notfound" };
}

// ------------------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The API asked for a bearer token (token auth), or rejected the one we sent. */
class NeedToken extends Error {}

/** Call the JSON API. Actions (any method but GET) carry X-Registry-UI: 1, which the server
 * requires against cross-site requests. Throws NeedToken on a 401 without a Basic challenge
 * (with Basic the browser itself asks for the password), ApiError on any other error. */
async function api(path, { method = "GET", signal } = {}) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (method !== "GET") headers["X-Registry-UI"] = "1";
  let resp;
  try {
    resp = await fetch(API + path, { method, headers, signal, credentials: "same-origin",
      cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "NETWORK", `The registry did not answer (${err.message}).`);
  }
  const challenge = resp.headers.get("WWW-Authenticate") || "";
  if (resp.status === 401 && !/^basic/i.test(challenge)) {
    throw new NeedToken(token ? "The registry rejected this token." : "");
  }
  let body = null;
  const text = await resp.text();
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (!resp.ok) {
    const first = body && Array.isArray(body.errors) && body.errors[0];
    const code = first ? String(first.code) : `HTTP_${resp.status}`;
    const message = first && first.message ? String(first.message) : resp.statusText;
    throw new ApiError(resp.status, code, message || `HTTP ${resp.status}`);
  }
  return body;
}

const repoApi = (name) => `/repositories/${encodeName(name)}`;

let infoPromise = null;

/** GET /info once per page load (the registry page asks again); null when it fails. */
function info(refresh = false) {
  if (refresh || infoPromise === null) {
    infoPromise = api("/info").catch((err) => {
      infoPromise = null;
      if (err instanceof NeedToken) throw err;
      return null;
    });
  }
  return infoPromise;
}

// ------------------------------------------------------------------------------ status, dialogs

let statusTimer = 0;

function say(message, kind = "ok") {
  const el = document.getElementById("status");
  el.className = `status ${kind}`;
  el.textContent = message;
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => {
    el.textContent = "";
    el.className = "status";
  }, STATUS_CLEAR_MS);
}

/** A modal confirmation. Resolves true on the confirm button, false on Cancel or Escape;
 * focus goes back to what had it before. `body`: nodes shown under the title. */
function confirmDialog(title, body, confirmLabel) {
  const opener = document.activeElement;
  const titleId = `dlg-${Date.now()}`;
  const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
  const ok = h("button", { type: "button", class: "danger" }, confirmLabel);
  const dialog = h("dialog", { class: "dialog", "aria-labelledby": titleId },
    h("h2", { id: titleId }, title), body,
    h("div", { class: "actions" }, cancel, ok));
  cancel.addEventListener("click", () => dialog.close("cancel"));
  ok.addEventListener("click", () => dialog.close("ok"));
  document.body.append(dialog);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (opener instanceof HTMLElement && opener.isConnected) opener.focus();
      resolve(dialog.returnValue === "ok");
    });
    dialog.showModal();
    cancel.focus(); // the safe choice has focus: Enter does not delete
  });
}

/** Run an action; its errors become a status message (never an uncaught rejection). */
async function act(button, work) {
  button.disabled = true;
  try {
    await work();
  } catch (err) {
    if (err instanceof NeedToken) {
      sessionStorage.removeItem(TOKEN_KEY);
      render();
      return;
    }
    say(err.message || String(err), "error");
  } finally {
    if (button.isConnected) {
      button.disabled = false;
      // A dialog closed while the button was disabled could not give the focus back to it.
      if (document.activeElement === document.body || document.activeElement === null) button.focus();
    }
  }
}

// ------------------------------------------------------------------------------ copy

/** Copy `text`: the clipboard API where the page may use it (secure contexts), else select
 * the input and execCommand("copy"), which plain-http pages still allow. */
async function copyText(text, input) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // denied: fall through to the selection
    }
  }
  input.focus();
  input.select();
  try {
    return document.execCommand("copy");
  } catch {
    return false;
  }
}

function pullCommand(name, tag) {
  const command = `docker pull ${location.host}/${name}:${tag}`;
  const input = h("input", { class: "pull", type: "text", readonly: true, value: command,
    "aria-label": `Pull command for ${name}:${tag}`, spellcheck: "false" });
  const button = h("button", { type: "button", class: "copy secondary" }, "Copy");
  button.addEventListener("click", async () => {
    const copied = await copyText(command, input);
    say(copied ? "Copied the pull command." : "Press Ctrl+C to copy the selected command.",
      copied ? "ok" : "error");
  });
  return h("div", { class: "pullbox" }, input, button);
}

// ------------------------------------------------------------------------------ pages

/** Every page: (route, signal) -> {title, node}. Errors propagate to render(). */

async function repositoriesPage(route, signal) {
  const params = new URLSearchParams(location.search);
  let q = params.get("q") || "";
  const last = params.get("last") || "";
  // ?n= (1..1000, the API's range) sets the page size; it stays in the pager's links.
  const asked = Number.parseInt(params.get("n") || "", 10);
  const n = asked >= 1 && asked <= 1000 ? asked : PAGE_SIZE;
  const filter = h("input", { id: "filter", type: "search", value: q, autocomplete: "off",
    spellcheck: "false", placeholder: "part of a name", "aria-controls": "repo-results" });
  const results = h("div", { id: "repo-results", "aria-live": "polite" });
  const form = h("form", { role: "search", class: "filter", onsubmit: (e) => e.preventDefault() },
    h("label", { for: "filter" }, "Filter"), filter);
  let controller = null;
  let timer = 0;

  async function load(cursor) {
    controller?.abort();
    controller = new AbortController();
    const query = new URLSearchParams({ n: String(n) });
    if (q) query.set("q", q);
    if (cursor) query.set("last", cursor);
    results.setAttribute("aria-busy", "true");
    try {
      const page = await api(`/repositories?${query}`, { signal: controller.signal });
      results.replaceChildren(...[catalogTable(page, q, cursor, n)].flat());
    } catch (err) {
      if (err.name === "AbortError") return;
      if (err instanceof NeedToken) throw err;
      results.replaceChildren(errorNode(err));
    } finally {
      results.removeAttribute("aria-busy");
    }
  }

  filter.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      q = filter.value.trim();
      history.replaceState(null, "", pageUrl.repositories(q, "", n));
      load("").catch(showFatal);
    }, FILTER_DEBOUNCE_MS);
  });
  signal.addEventListener("abort", () => {
    clearTimeout(timer);
    controller?.abort();
  });
  await load(last);
  return {
    title: "Repositories",
    node: [h("h1", { tabindex: "-1" }, "Repositories"), form, results],
  };
}

function catalogTable(page, q, cursor, n) {
  const repos = page.repositories || [];
  if (repos.length === 0) {
    if (q) return h("p", { class: "empty" }, "No repository name contains ", h("q", {}, q), ".");
    if (cursor) return h("p", { class: "empty" }, "No more repositories.");
    return h("div", { class: "empty" },
      h("p", {}, "No repositories yet. Push an image to see it here:"),
      h("pre", {}, h("code", {}, `docker tag IMAGE ${location.host}/NAME:TAG\n` +
        `docker push ${location.host}/NAME:TAG`)));
  }
  const rows = repos.map((repo) => h("tr", {},
    h("td", { "data-label": "Name", class: "name" }, link(pageUrl.repository(repo.name), repo.name)),
    h("td", { "data-label": "Tags", class: "num" }, count(repo.tags)),
    h("td", { "data-label": "Last push" }, timeNode(repo.last_push)),
    h("td", { "data-label": "Size", class: "num" }, sizeNode(repo.size))));
  const table = h("table", { class: "list catalog" },
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Name"), h("th", { scope: "col", class: "num" }, "Tags"),
      h("th", { scope: "col" }, "Last push"), h("th", { scope: "col", class: "num" }, "Size"))),
    h("tbody", {}, rows));
  const pager = h("nav", { class: "pager", "aria-label": "Pages" },
    cursor ? link(pageUrl.repositories(q, "", n), "First page") : null,
    page.next ? link(pageUrl.repositories(q, page.next, n), "Next page") : null);
  return [table, pager];
}

async function repositoryPage(route, signal) {
  const [repo, registry] = await Promise.all([api(repoApi(route.name), { signal }), info()]);
  const canDelete = Boolean(repo.can_delete) && registry?.delete_enabled !== false;
  const tags = repo.tags || [];
  const heading = h("h1", { tabindex: "-1", class: "name" }, repo.name);
  const crumbs = h("nav", { class: "crumbs", "aria-label": "Breadcrumb" },
    link(pageUrl.repositories(), "Repositories"), " / ", h("span", {}, repo.name));
  if (tags.length === 0) {
    return { title: repo.name, node: [crumbs, heading, h("p", { class: "empty" }, "No tags.")] };
  }
  const rows = tags.map((tag) => {
    const platforms = (tag.platforms || []).map((p) =>
      h("li", {}, link(pageUrl.manifest(repo.name, p.digest), platformText(p))));
    const del = canDelete
      ? h("button", { type: "button", class: "danger small",
        "aria-label": `Delete tag ${tag.tag}` }, "Delete")
      : null;
    del?.addEventListener("click", () => act(del, async () => {
      const sure = await confirmDialog(`Delete tag ${tag.tag}?`, [
        h("p", {}, "The tag ", h("code", {}, tag.tag), " goes; the manifest ",
          h("code", {}, shortDigest(tag.digest)), " stays, reachable by digest and by its other tags.")],
      "Delete tag");
      if (!sure) return;
      await api(`${repoApi(repo.name)}/tags/${encodeURIComponent(tag.tag)}`, { method: "DELETE" });
      say(`Deleted tag ${tag.tag}.`);
      await render();
    }));
    return h("tr", {},
      h("td", { "data-label": "Tag", class: "name" }, h("strong", {}, tag.tag),
        tag.artifact_type ? h("div", { class: "muted small" }, tag.artifact_type) : null),
      h("td", { "data-label": "Digest" }, link(pageUrl.manifest(repo.name, tag.digest),
        digestNode(tag.digest))),
      h("td", { "data-label": "Size", class: "num" }, sizeNode(tag.size),
        tag.shared_size ? h("div", { class: "muted small" }, `${bytes(tag.shared_size)} shared`)
          : null),
      h("td", { "data-label": "Created" }, timeNode(tag.created)),
      h("td", { "data-label": "Platforms" },
        platforms.length ? h("ul", { class: "platforms" }, platforms) : h("span", { class: "muted" }, "–")),
      h("td", { "data-label": "Pull" }, pullCommand(repo.name, tag.tag)),
      canDelete ? h("td", { "data-label": "" }, del) : null);
  });
  const table = h("table", { class: "list tags" },
    h("thead", {}, h("tr", {},
      ["Tag", "Digest", "Size", "Created", "Platforms", "Pull"].map((c) =>
        h("th", { scope: "col", class: c === "Size" ? "num" : null }, c)),
      canDelete ? h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")) : null)),
    h("tbody", {}, rows));
  const shared = tags.some((t) => t.shared_size)
    ? h("p", { class: "muted small" }, "“shared”: bytes of layers that other tags of this repository use too.")
    : null;
  return { title: repo.name, node: [crumbs, heading, table, shared] };
}

const REFERRER_KINDS = [
  ["Signatures", /signature|\.sig\b|cosign|notary|sigstore/i],
  ["SBOMs", /sbom|spdx|cyclonedx|syft/i],
  ["Attestations", /attestation|in-toto|intoto|provenance|slsa|vex/i],
];

function referrerKind(artifactType) {
  const found = REFERRER_KINDS.find(([, re]) => re.test(artifactType || ""));
  return found ? found[0] : "Other artifacts";
}

function annotationsList(annotations) {
  const entries = Object.entries(annotations || {});
  if (entries.length === 0) return null;
  return h("dl", { class: "annotations" },
    entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
}

function section(title, ...content) {
  return h("section", {}, h("h2", {}, title), content);
}

async function manifestPage(route, signal) {
  const [m, repo, registry] = await Promise.all([
    api(`${repoApi(route.name)}/manifests/${route.digest}`, { signal }),
    api(repoApi(route.name), { signal }).catch(() => null),
    info(),
  ]);
  const name = route.name;
  const canDelete = Boolean(repo?.can_delete) && registry?.delete_enabled !== false;
  const goto = (digest) => link(pageUrl.manifest(name, digest), digestNode(digest));
  const crumbs = h("nav", { class: "crumbs", "aria-label": "Breadcrumb" },
    link(pageUrl.repositories(), "Repositories"), " / ",
    link(pageUrl.repository(name), name), " / ", h("span", {}, shortDigest(m.digest)));
  const facts = h("dl", { class: "facts" },
    h("dt", {}, "Digest"), h("dd", {}, h("code", { class: "digest full" }, m.digest)),
    h("dt", {}, "Media type"), h("dd", {}, m.media_type),
    m.artifact_type ? [h("dt", {}, "Artifact type"), h("dd", {}, m.artifact_type)] : null,
    h("dt", {}, "Size"), h("dd", {}, sizeNode(m.size)),
    h("dt", {}, "Created"), h("dd", {}, timeNode(m.created)),
    m.os || m.architecture ? [h("dt", {}, "Platform"),
      h("dd", {}, platformText({ os: m.os, architecture: m.architecture }))] : null,
    h("dt", {}, "Tags"), h("dd", {}, (m.tags || []).length
      ? (m.tags || []).map((t) => h("span", { class: "tag" }, t)) : h("span", { class: "muted" }, "none")),
    m.subject ? [h("dt", {}, "Subject"), h("dd", { class: "subject" }, goto(m.subject.digest),
      " ", h("span", { class: "muted small" }, m.subject.media_type || ""))] : null);

  const parts = [crumbs, h("h1", { tabindex: "-1" }, m.artifact_type ? "Artifact" : "Manifest"), facts];
  if (canDelete) parts.push(deleteManifestButton(name, m));
  if ((m.manifests || []).length) {
    parts.push(section("Platforms", h("table", { class: "list children" },
      h("thead", {}, h("tr", {}, ["Platform", "Digest", "Size", "Media type"]
        .map((c) => h("th", { scope: "col", class: c === "Size" ? "num" : null }, c)))),
      h("tbody", {}, m.manifests.map((c) => h("tr", {},
        h("td", { "data-label": "Platform" }, platformText(c.platform)),
        h("td", { "data-label": "Digest" }, goto(c.digest)),
        h("td", { "data-label": "Size", class: "num" }, sizeNode(c.size)),
        h("td", { "data-label": "Media type", class: "small" }, c.media_type)))))));
  }
  if (m.config) {
    parts.push(section("Config", h("dl", { class: "facts" },
      h("dt", {}, "Digest"), h("dd", {}, digestNode(m.config.digest)),
      h("dt", {}, "Size"), h("dd", {}, sizeNode(m.config.size)),
      h("dt", {}, "Media type"), h("dd", {}, m.config.media_type))));
  }
  if ((m.layers || []).length) {
    const total = m.layers.reduce((sum, l) => sum + (Number(l.size) || 0), 0);
    parts.push(section(`Layers (${m.layers.length}, ${bytes(total)})`, h("table", { class: "list layers" },
      h("thead", {}, h("tr", {}, ["#", "Digest", "Size", "Media type"]
        .map((c) => h("th", { scope: "col", class: c === "Size" || c === "#" ? "num" : null }, c)))),
      h("tbody", {}, m.layers.map((l, i) => h("tr", {},
        h("td", { "data-label": "#", class: "num" }, String(i + 1)),
        h("td", { "data-label": "Digest" }, digestNode(l.digest), annotationsList(l.annotations)),
        h("td", { "data-label": "Size", class: "num" }, sizeNode(l.size)),
        h("td", { "data-label": "Media type", class: "small" }, l.media_type)))))));
  }
  if ((m.history || []).length) {
    parts.push(section("History", h("ol", { class: "history" }, m.history.map((step) =>
      h("li", { class: step.empty_layer ? "empty-layer" : null },
        h("div", { class: "muted small" }, timeNode(step.created),
          step.empty_layer ? " · no layer" : "", step.comment ? ` · ${step.comment}` : ""),
        h("code", { class: "command" }, step.created_by || "–"))))));
  }
  const notes = annotationsList(m.annotations);
  if (notes) parts.push(section("Annotations", notes));
  parts.push(referrersSection(name, m.referrers || []));
  return { title: `${name}@${shortDigest(m.digest)}`, node: parts };
}

function referrersSection(name, referrers) {
  if (referrers.length === 0) {
    return section("Referrers", h("p", { class: "muted" }, "No signatures, SBOMs or attestations refer to this manifest."));
  }
  const groups = new Map();
  for (const r of referrers) {
    const kind = referrerKind(r.artifact_type);
    if (!groups.has(kind)) groups.set(kind, []);
    groups.get(kind).push(r);
  }
  const order = [...REFERRER_KINDS.map(([k]) => k), "Other artifacts"];
  return section("Referrers", order.filter((k) => groups.has(k)).map((kind) =>
    h("div", { class: "referrers" }, h("h3", {}, `${kind} (${groups.get(kind).length})`),
      h("ul", {}, groups.get(kind).map((r) => h("li", {},
        link(pageUrl.manifest(name, r.digest), digestNode(r.digest)), " ",
        h("span", { class: "small" }, r.artifact_type || r.media_type || ""), " ",
        sizeNode(r.size), annotationsList(r.annotations)))))));
}

function deleteManifestButton(name, m) {
  const button = h("button", { type: "button", class: "danger" }, "Delete manifest");
  button.addEventListener("click", () => act(button, async () => {
    const preview = m.delete_preview || { tags: [], referrers: [], children: [] };
    const goes = [];
    if ((preview.tags || []).length) {
      goes.push(h("li", {}, `Tags: `, preview.tags.map((t) => h("code", { class: "tag" }, t))));
    }
    if ((preview.referrers || []).length) {
      goes.push(h("li", {}, `Referrers no longer reachable: `,
        preview.referrers.map((d) => h("code", { class: "tag" }, shortDigest(d)))));
    }
    if ((preview.children || []).length) {
      goes.push(h("li", {}, `Platform manifests no longer referenced: `,
        preview.children.map((d) => h("code", { class: "tag" }, shortDigest(d)))));
    }
    const sure = await confirmDialog(`Delete manifest ${shortDigest(m.digest)}?`, [
      h("p", {}, "This removes the manifest from ", h("strong", {}, name), "."),
      goes.length ? [h("p", {}, "Also gone with it:"), h("ul", { class: "goes" }, goes)]
        : h("p", {}, "Nothing else points at it."),
      h("p", { class: "muted small" }, "Its layers are freed by the next garbage collection."),
    ], "Delete manifest");
    if (!sure) return;
    await api(`${repoApi(name)}/manifests/${m.digest}`, { method: "DELETE" });
    say(`Deleted manifest ${shortDigest(m.digest)}.`);
    navigate(pageUrl.repository(name));
  }));
  return h("p", { class: "actions" }, button);
}

async function registryPage(route, signal) {
  const data = await info(true);
  if (signal.aborted) return { title: "Registry", node: [] };
  if (data === null) throw new ApiError(0, "UNKNOWN", "The registry's status is not available.");
  const storage = data.storage || {};
  // The totals are walked in the background: null is unknown (never shown as 0), and while
  // the server computes them the page says so and asks again.
  const totals = (value, show) => {
    if (value === null || value === undefined) {
      return h("span", { class: "muted" }, storage.computing ? "being computed…" : "not computed yet");
    }
    return storage.computing ? [show(value), h("span", { class: "muted" }, " (updating…)")] : show(value);
  };
  const gc = data.gc || {};
  const user = data.user || {};
  const facts = h("dl", { class: "facts" },
    h("dt", {}, "Version"), h("dd", {}, data.version || "–"),
    h("dt", {}, "Storage"), h("dd", {}, storage.driver || "–"),
    h("dt", {}, "Storage used"), h("dd", {}, totals(storage.bytes, sizeNode)),
    h("dt", {}, "Blobs"), h("dd", {}, totals(storage.blobs, count)),
    h("dt", {}, "Computed"), h("dd", {}, totals(storage.computed_at, timeNode)),
    h("dt", {}, "Uploads in progress"), h("dd", {}, totals(data.uploads_in_progress, count)),
    h("dt", {}, "Deletion"), h("dd", {}, data.delete_enabled ? "enabled" : "disabled"),
    h("dt", {}, "Authentication"), h("dd", {}, data.auth || "–"),
    user.name ? [h("dt", {}, "Signed in as"), h("dd", {}, user.name)] : null);
  const gcFacts = h("p", {}, gc.online ? "Online garbage collection is on. " : "Online garbage collection is off. ",
    gc.running ? h("strong", {}, "A run is in progress.") : "No run in progress.");
  const start = user.can_gc
    ? h("button", { type: "button", disabled: Boolean(gc.running) }, "Start garbage collection")
    : null;
  start?.addEventListener("click", () => act(start, async () => {
    try {
      await api("/gc", { method: "POST" });
      say("Garbage collection started.");
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 409) throw err;
      say("A garbage collection is already running.", "error");
    }
    await render();
  }));
  if (gc.running || storage.computing) {
    // Show the run's end, or the totals, without a manual reload; a newer page (or this one
    // again) cancels it.
    const timer = setTimeout(() => render().catch(showFatal), gc.running ? GC_POLL_MS : TOTALS_POLL_MS);
    signal.addEventListener("abort", () => clearTimeout(timer));
  }
  const runs = gc.last_runs || [];
  const runTable = runs.length ? h("table", { class: "list runs" },
    h("thead", {}, h("tr", {}, ["Started", "Finished", "Manifests deleted", "Blobs deleted", "Freed", "Error"]
      .map((c, i) => h("th", { scope: "col", class: i >= 2 && i <= 4 ? "num" : null }, c)))),
    h("tbody", {}, runs.map((r) => h("tr", {},
      h("td", { "data-label": "Started" }, timeNode(r.started)),
      h("td", { "data-label": "Finished" }, r.finished ? timeNode(r.finished) : "running"),
      h("td", { "data-label": "Manifests deleted", class: "num" }, count(r.manifests_deleted)),
      h("td", { "data-label": "Blobs deleted", class: "num" }, count(r.blobs_deleted)),
      h("td", { "data-label": "Freed", class: "num" }, sizeNode(r.bytes_freed)),
      h("td", { "data-label": "Error", class: r.error ? "error-text" : "muted" }, r.error || "–")))))
    : h("p", { class: "muted" }, "No runs yet.");
  return {
    title: "Registry",
    node: [h("h1", { tabindex: "-1" }, "Registry"), facts,
      section("Garbage collection", gcFacts, start ? h("p", { class: "actions" }, start) : null,
        h("h3", {}, "Last runs"), runTable)],
  };
}

function notFoundPage() {
  return {
    title: "Not found",
    node: [h("h1", { tabindex: "-1" }, "Not found"),
      h("p", {}, "There is no page at this address."), h("p", {}, link(pageUrl.repositories(), "All repositories"))],
  };
}

function tokenPage(message) {
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true,
    spellcheck: "false" });
  const form = h("form", { class: "token-form" },
    h("label", { for: "token" }, "Bearer token"), input,
    h("button", { type: "submit" }, "Use token"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    render();
  });
  return {
    title: "Sign in",
    node: [h("h1", { tabindex: "-1" }, "Sign in"),
      message ? h("p", { class: "error", role: "alert" }, message) : null,
      h("p", {}, "This registry uses token authentication. Paste a token that grants pull access; ",
        "it is kept in this tab only (session storage) and sent as a Bearer token."),
      form],
  };
}

function errorNode(err) {
  if (err instanceof ApiError && err.status === 404) {
    return h("div", { class: "error", role: "alert" }, h("p", {}, "Not found: ", err.message || err.code));
  }
  const what = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err.message || err);
  return h("div", { class: "error", role: "alert" }, h("p", {}, "Something went wrong. ", what));
}

function errorPage(err) {
  const notFound = err instanceof ApiError && err.status === 404;
  return {
    title: notFound ? "Not found" : "Error",
    node: [h("h1", { tabindex: "-1" }, notFound ? "Not found" : "Error"), errorNode(err),
      h("p", {}, link(pageUrl.repositories(), "All repositories"))],
  };
}

// ------------------------------------------------------------------------------ the router

const PAGES = {
  repositories: repositoriesPage,
  repository: repositoryPage,
  manifest: manifestPage,
  registry: registryPage,
  notfound: notFoundPage,
};

let current = null; // the AbortController of the page being shown
let navigations = 0;

/** Show the page the current URL names. A newer render() supersedes an older one. */
async function render() {
  current?.abort();
  const controller = new AbortController();
  current = controller;
  const seq = ++navigations;
  const main = document.getElementById("main");
  const route = parseRoute(location.pathname);
  main.setAttribute("aria-busy", "true");
  let page;
  try {
    page = await PAGES[route.page](route, controller.signal);
  } catch (err) {
    if (err.name === "AbortError" || seq !== navigations) return;
    if (err instanceof NeedToken) {
      sessionStorage.removeItem(TOKEN_KEY);
      page = tokenPage(err.message);
    } else {
      page = errorPage(err);
    }
  }
  if (seq !== navigations) return;
  main.removeAttribute("aria-busy");
  main.replaceChildren(...[page.node].flat(Infinity).filter(Boolean));
  document.title = `${page.title} · Registry`;
  markNav(route.page);
  showUser();
  if (navigated) {
    const heading = main.querySelector("h1");
    (heading || main).focus({ preventScroll: true });
  }
}

let navigated = false; // focus moves to the new page's heading after a link, not on load

function navigate(url) {
  history.pushState(null, "", url);
  navigated = true;
  window.scrollTo(0, 0);
  render().catch(showFatal);
}

function markNav(page) {
  for (const a of document.querySelectorAll("[data-nav]")) {
    const here = a.dataset.nav === page || (a.dataset.nav === "repositories" && page !== "registry");
    if (here) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function showUser() {
  const who = document.getElementById("who");
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) {
    const forget = h("button", { type: "button", class: "link" }, "Forget token");
    forget.addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      infoPromise = null;
      render().catch(showFatal);
    });
    who.replaceChildren("Token in use · ", forget);
    return;
  }
  who.replaceChildren();
  info().then((data) => {
    if (data?.user?.name) {
      who.replaceChildren(`Signed in as ${data.user.name}`);
    } else if (data?.auth === "htpasswd") {
      // Anonymous browsing of a public registry: /ui/login answers 401 with the Basic
      // challenge, the browser asks for credentials, and the server sends it back here.
      // A real navigation (data-reload), not one of this page's own.
      const next = encodeURIComponent(location.pathname + location.search);
      who.replaceChildren(h("a", { href: `${UI}/login?next=${next}`, "data-reload": "" }, "Sign in"));
    }
  }).catch(() => {});
}

function showFatal(err) {
  const main = document.getElementById("main");
  main.removeAttribute("aria-busy");
  main.replaceChildren(h("h1", { tabindex: "-1" }, "Error"), errorNode(err));
}

/** Same-origin links into the UI's pages load without a page reload; a modified click
 * (new tab, new window, download) stays the browser's. */
function onClick(ev) {
  if (ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  const a = ev.target instanceof Element ? ev.target.closest("a[href]") : null;
  if (!a || (a.target && a.target !== "_self") || a.hasAttribute("download") || a.hasAttribute("data-reload")) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin) return;
  if (url.pathname !== UI && !url.pathname.startsWith(`${UI}/`)) return;
  if (url.pathname.startsWith(`${UI}/assets/`) || url.pathname.startsWith(`${UI}/api/`)) return;
  if (url.hash && url.pathname === location.pathname && url.search === location.search) return;
  ev.preventDefault();
  navigate(url.pathname + url.search);
}

function start() {
  // The static page's links say /ui/...; under an http.prefix they need the prefix too.
  for (const a of document.querySelectorAll("a[data-nav], a.brand")) {
    const target = a.dataset.nav === "registry" ? pageUrl.registry() : pageUrl.repositories();
    a.setAttribute("href", target);
  }
  document.addEventListener("click", onClick);
  window.addEventListener("popstate", () => {
    navigated = true;
    render().catch(showFatal);
  });
  window.addEventListener("unhandledrejection", (ev) => say(String(ev.reason?.message || ev.reason), "error"));
  window.addEventListener("error", (ev) => say(String(ev.message), "error"));
  render().catch(showFatal);
}

start();
