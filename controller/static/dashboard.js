"use strict";
// The hostplane dashboard: reads the JSON API with the operator's token every few
// seconds and draws the tables with DOM calls only (textContent, never innerHTML:
// device and host names are user input). Actions are the API's own PATCH/POST/DELETE,
// so a tenant token sees the API's 403 rather than a hidden button.

const REFRESH_MS = 5000;
const TOKEN_KEY = "hostplane.token";
const GPU_TYPES = new Set(["gpu", "gpu-audio"]);
const ui = { editing: false, refreshFailed: false, prompted: false, hosts: [] };
const WRAP = "wrap";   // cells of free text: they wrap instead of widening the table
const $ = (id) => document.getElementById(id);

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }

async function api(method, path, body) {
  const options = { method, headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error((data && data.error && data.error.message) || response.statusText);
    error.status = response.status;
    error.details = data && data.error ? data.error.details : null;
    throw error;
  }
  return data;
}

function say(text, isError) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined || text === "" ? "—" : String(text);
  if (cls) td.className = cls;
  return td;
}

function button(parent, label, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.dataset.action = label;
  b.addEventListener("click", action);
  parent.appendChild(b);
  return b;
}

function when(iso) { return iso ? iso.replace("T", " ").slice(0, 19) : null; }

function statusClass(value) {
  return { connected: "ok", ready: "ok", enabled: "ok", attached: "warn",
           connecting: "warn", disconnected: "bad", unavailable: "bad", disabled: "bad",
           not_assignable: "bad" }[value];
}

// --- reading ---------------------------------------------------------------------------
async function refresh() {
  if (ui.editing) return;
  if (!token()) {
    say("Enter an API token (admin or tenant) to see the cluster.");
    ui.prompted = true;
    return;
  }
  try {
    const [hosts, devices, pools] = await Promise.all([
      api("GET", "/v1/hosts"), api("GET", "/v1/devices" + deviceQuery()),
      api("GET", "/v1/device-pools")]);
    if (ui.editing) return;   // an edit began while the answer was on its way
    ui.hosts = hosts.hosts;
    drawFilters();
    drawHosts(hosts.hosts.filter(inScope));
    drawDevices(devices.devices);
    drawPools(pools.pools);
    drawTopology($("topology"), hosts.hosts.filter(inScope), devices.devices);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    if (ui.refreshFailed || ui.prompted) say("");   // the token works: no stale prompt
    ui.refreshFailed = ui.prompted = false;
  } catch (error) {
    ui.refreshFailed = true;
    say(error.status === 401 ? "That token was refused." : "Refresh failed: " + error.message,
        true);
  }
}

function deviceQuery() {
  const params = new URLSearchParams();
  if ($("cluster").value) params.set("cluster", $("cluster").value);
  if ($("host").value) params.set("host", $("host").value);
  const text = params.toString();
  return text ? "?" + text : "";
}

function inScope(host) {
  return (!$("cluster").value || host.cluster === $("cluster").value)
      && (!$("host").value || host.id === $("host").value);
}

function drawFilters() {
  fillSelect($("cluster"), [...new Set(ui.hosts.map((h) => h.cluster))].sort());
  fillSelect($("host"), ui.hosts.filter((h) => !$("cluster").value
                                          || h.cluster === $("cluster").value)
                               .map((h) => h.id));
}

function fillSelect(select, values) {
  const chosen = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const value of values) select.add(new Option(value, value));
  select.value = values.includes(chosen) ? chosen : "";
}

function drawHosts(hosts) {
  const body = $("hosts").tBodies[0];
  body.replaceChildren();
  for (const h of hosts) {
    const row = body.insertRow();
    row.dataset.host = h.id;
    cell(row, h.hostname && h.hostname !== h.id ? `${h.id} (${h.hostname})` : h.id);
    cell(row, h.cluster);
    cell(row, h.status, statusClass(h.status));
    cell(row, h.state, h.state === "enabled" ? "ok" : "warn");
    cell(row, h.iommu_ready ? "ready" : "not ready", h.iommu_ready ? "ok" : "warn");
    cell(row, h.vms);
    cell(row, `${h.used_vcpus} / ${h.cpu_threads ?? "?"}`);
    cell(row, `${h.used_memory_mib} / ${h.memory_mib ?? "?"}`);
    cell(row, when(h.last_seen));
    cell(row, h.last_error, h.last_error ? "bad " + WRAP : WRAP);
  }
}

// A pool's match in one line, its counts, and its shares (a tenant: its own quota).
function drawPools(pools) {
  const body = $("pools").tBodies[0];
  body.replaceChildren();
  for (const p of pools) {
    const row = body.insertRow();
    row.dataset.pool = p.name;
    const match = [`${p.vendor_id}:${p.device_id}`,
                   p.subsystem_vendor_id || p.subsystem_device_id
                     ? `sub ${p.subsystem_vendor_id || "*"}:${p.subsystem_device_id || "*"}` : "",
                   p.type ? `type ${p.type}` : "", p.vf_of ? `VFs of ${p.vf_of}` : ""];
    cell(row, p.name);
    cell(row, match.filter(Boolean).join(" "));
    cell(row, p.size);
    cell(row, p.free, p.free ? "ok" : "warn");
    cell(row, p.attached);
    cell(row, p.unavailable, p.unavailable ? "bad" : "");
    cell(row, Object.entries(p.hosts).map(([h, c]) => `${h} ${c.free}/${c.size}`).join(", "),
         WRAP);
    const shares = p.shares || (p.quota ? [p.quota] : []);
    cell(row, shares.map((s) => `${s.tenant} ${s.used}/${s.max_count}`).join(", "), WRAP);
  }
}

// Each device table's columns: [text of the cell, class of the cell].
const USB_COLUMNS = [
  (d) => [d.name, WRAP], (d) => [d.manufacturer, WRAP], (d) => [d.product, WRAP],
  (d) => [d.host_id], (d) => [d.state, statusClass(d.state)], (d) => [d.usb_version],
  (d) => deviceStatus(d), (d) => [d.vm], (d) => [when(d.created_at)]];
const GPU_COLUMNS = [
  (d) => [d.name, WRAP], (d) => [d.id], (d) => [d.type], (d) => [d.host_id],
  (d) => [d.state, statusClass(d.state)], (d) => deviceStatus(d),
  (d) => [d.vm], (d) => [d.shared ? "yes" : "no"], (d) => [when(d.created_at)]];

// A device nobody can take is not "ready", whatever its claim status says.
function deviceStatus(d) {
  if (d.status === "not_assignable" || (d.status === "ready" && d.assignable === false)) {
    return ["not assignable", "warn"];
  }
  return [d.status, statusClass(d.status)];
}

function drawDevices(devices) {
  const tables = { usb: [$("usb").tBodies[0], USB_COLUMNS],
                   gpu: [$("gpus").tBodies[0], GPU_COLUMNS] };
  for (const [body] of Object.values(tables)) body.replaceChildren();
  for (const d of devices) {
    const table = d.kind === "usb" ? tables.usb : GPU_TYPES.has(d.type) ? tables.gpu : null;
    if (!table) continue;
    const row = deviceRow(table[0], d);
    for (const column of table[1]) cell(row, ...column(d));
    const why = d.unavailable_reason || d.not_assignable_reason;
    if (why) row.title = why;
    actions(row, d);
  }
}

function deviceRow(body, d) {
  const row = body.insertRow();
  row.dataset.device = `${d.host_id}/${d.id}`;
  return row;
}

// --- acting ----------------------------------------------------------------------------
function devicePath(d) {
  return `/v1/devices/${encodeURIComponent(d.host_id)}/${encodeURIComponent(d.id)}`;
}

function actions(row, d) {
  const td = row.insertCell();
  td.className = "actions";
  const label = `${d.name || d.id} on ${d.host_id}`;
  const enable = d.state === "enabled" ? "disable" : "enable";
  button(td, enable, () => act(`${label}: ${enable}d`,
                               "PATCH", devicePath(d), { state: enable + "d" }));
  button(td, "rename", () => ask(row.cells[0], d.name || "", (name) =>
    act(`${label} renamed to ${name}`, "PATCH", devicePath(d), { name })));
  if (d.kind === "pci") {
    const share = d.shared ? "recall" : "share";
    button(td, share, () => act(`${label}: ${share === "share" ? "shared" : "recalled"}`,
                                "PATCH", devicePath(d), { shared: !d.shared }));
  }
  if (d.vm) {
    button(td, "detach", () => act(`${label} detached from ${d.vm}`, "DELETE",
      `/v1/vms/${encodeURIComponent(d.vm)}/devices/${encodeURIComponent(d.host_id)}/`
      + encodeURIComponent(d.id)));
  } else if (d.status === "ready" && d.state === "enabled" && d.assignable !== false) {
    button(td, "attach", () => ask(td, "", (vm) => act(`${label} attached to ${vm}`, "POST",
      `/v1/vms/${encodeURIComponent(vm)}/devices`, { type: d.kind, id: d.id }), "VM name"));
  }
}

// Replace `where`'s content by a small input; refreshing waits until it is answered.
function ask(where, value, then, placeholder) {
  ui.editing = true;
  const form = document.createElement("form");
  const input = document.createElement("input");
  input.value = value;
  input.placeholder = placeholder || "";
  input.required = true;
  form.appendChild(input);
  const ok = document.createElement("button");
  ok.textContent = "save";
  form.appendChild(ok);
  button(form, "cancel", () => { ui.editing = false; refresh(); });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ui.editing = false;
    then(input.value.trim());
  });
  where.replaceChildren(form);
  input.focus();
}

async function act(done, method, path, body) {
  try {
    await api(method, path, body);
    say(done);
  } catch (error) {
    say(error.message + (error.status === 403 ? " (admin token needed)" : ""), true);
  }
  await refresh();
}

// --- the "why can't this VM be placed" form --------------------------------------------
function placementBody() {
  const body = { name: $("x-name").value.trim(), vcpus: Number($("x-vcpus").value),
                 memory_mib: Number($("x-memory").value) };
  const gpus = $("x-gpus").value.split(",").map((s) => s.trim()).filter(Boolean);
  body.gpus = gpus.map((text) => {
    const model = /^([0-9a-f]{4}):([0-9a-f]{4})(?:x(\d+))?$/i.exec(text);
    return model ? { vendor_id: model[1], device_id: model[2], count: Number(model[3] || 1) }
                 : { id: text };
  });
  body.usb = $("x-usb").value.split(",").map((s) => s.trim()).filter(Boolean)
                 .map((id) => ({ id }));
  body.devices = $("x-pools").value.split(",").map((s) => s.trim()).filter(Boolean)
                     .map((text) => {
                       const ask = /^(.+?)(?:x(\d+))?$/.exec(text);
                       return { pool: ask[1], count: Number(ask[2] || 1) };
                     });
  if ($("x-cluster").value.trim()) body.cluster = $("x-cluster").value.trim();
  return body;
}

async function explain(event) {
  event.preventDefault();
  const out = $("explain");
  out.replaceChildren();
  try {
    const answer = await api("POST", "/v1/schedule/explain", placementBody());
    const verdict = document.createElement("p");
    verdict.id = "explain-verdict";
    verdict.textContent = answer.refused ? `Refused: ${answer.refused.message}.`
      : answer.chosen ? `Placeable: ${answer.chosen} would be chosen.`
      : "Not placeable on any host.";
    verdict.className = answer.chosen ? "ok" : "bad";
    out.appendChild(verdict);
    list(out, "Candidates", answer.candidates.map((c) => `${c.host} (score ${c.score})`));
    list(out, "Rejected", Object.entries(answer.rejected)
      .map(([host, reasons]) => `${host}: ${reasons.join("; ")}`));
  } catch (error) {
    const problem = document.createElement("p");
    problem.className = "bad";
    problem.textContent = error.message + (error.details ? " " + JSON.stringify(error.details)
                                                         : "");
    out.appendChild(problem);
  }
}

function list(parent, title, items) {
  if (!items.length) return;
  const heading = document.createElement("h3");
  heading.textContent = title;
  const ul = document.createElement("ul");
  for (const item of items) ul.appendChild(document.createElement("li")).textContent = item;
  parent.append(heading, ul);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
  });
  $("forget-token").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  $("cluster").addEventListener("change", refresh);
  $("host").addEventListener("change", refresh);
  $("explain-form").addEventListener("submit", explain);
  refresh();
  setInterval(refresh, REFRESH_MS);
});
