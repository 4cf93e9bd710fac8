"use strict";
// The per-host topology picture: NUMA nodes side by side, in each the PCIe switches and
// root ports that lead to its devices, and every device with its IOMMU group, pool and
// holder. Drawn as SVG with DOM calls only (textContent: names are user input), from the
// same /v1/hosts and /v1/devices answers the tables use.

const SVG_NS = "http://www.w3.org/2000/svg";
const TOPO = { column: 250, gap: 16, header: 44, groupHeader: 24, pad: 10, device: 66,
               deviceGap: 6, maxHosts: 4 };

// Where a device hangs: its nearest PCIe switch (the upstream port above its downstream
// port: upstream is root port first), else its root port, else the root complex.
function attachment(d) {
  const chain = d.upstream || [];
  if (chain.length >= 3) return { kind: "switch", id: chain[chain.length - 2] };
  if (chain.length >= 1) return { kind: "port", id: chain[0] };
  return { kind: "root", id: "root complex" };
}

// [{node, label, groups: [{kind, id, devices}]}]: one column per NUMA node the host
// reports or a device names, plus one for devices whose node is unknown.
function topologyColumns(host, devices) {
  const columns = new Map();
  const column = (key, label) => {
    if (!columns.has(key)) columns.set(key, { node: key, label, groups: new Map() });
    return columns.get(key);
  };
  for (const n of host.numa_nodes || []) {
    column(String(n.id), [`NUMA node ${n.id}`,
                          `CPUs ${n.cpus || "none"} · ${Math.round(n.memory_mib / 1024)} GiB`]);
  }
  const endpoints = devices.filter((d) => d.kind === "pci" && d.type !== "bridge");
  endpoints.sort((a, b) => (a.id < b.id ? -1 : 1));
  for (const d of endpoints) {
    const known = d.numa_node !== null && d.numa_node !== undefined;
    const col = known ? column(String(d.numa_node), [`NUMA node ${d.numa_node}`, ""])
                      : column("none", ["No NUMA node", "firmware names none"]);
    const where = attachment(d);
    const key = `${where.kind}:${where.id}`;
    if (!col.groups.has(key)) col.groups.set(key, { ...where, devices: [] });
    col.groups.get(key).devices.push(d);
  }
  return [...columns.values()]
    .sort((a, b) => (a.node === "none") - (b.node === "none") || Number(a.node) - Number(b.node))
    .map((c) => ({ ...c, groups: [...c.groups.values()] }));
}

function svgElement(parent, name, attributes, text) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes || {})) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  if (parent) parent.appendChild(element);
  return element;
}

// "held" (by a VM named or not), "not_assignable", or the claim status.
function deviceState(d) {
  if (d.vm || d.status === "attached") return "held";
  if (d.status === "not_assignable" || d.assignable === false) return "not_assignable";
  return d.status;
}

function deviceLines(d) {
  const holder = d.vm ? `VM ${d.vm}` : { held: "held by another VM",
                                         not_assignable: "not assignable" }[deviceState(d)]
                                       || d.status;
  const group = d.iommu_group === null || d.iommu_group === undefined
    ? "no IOMMU group" : `IOMMU group ${d.iommu_group}`;
  return [d.id, `${d.type}${d.name && d.name !== d.id ? " · " + d.name : ""}`,
          d.pool ? `${group} · pool ${d.pool}` : group, holder];
}

function drawDevice(parent, d, x, y, width) {
  const g = svgElement(parent, "g", { class: `device ${deviceState(d)}`,
                                      "data-device": d.id, transform: `translate(${x},${y})` });
  svgElement(g, "rect", { width, height: TOPO.device, rx: 4 });
  deviceLines(d).forEach((line, index) => {
    svgElement(g, "text", { x: 8, y: 16 + index * 14, class: index === 0 ? "title" : "" },
               line.length > 31 ? line.slice(0, 30) + "…" : line);
  });
  svgElement(g, "title", {}, deviceLines(d).join("\n"));
}

function groupHeight(group) {
  return TOPO.groupHeader + group.devices.length * (TOPO.device + TOPO.deviceGap) + TOPO.pad;
}

function drawGroup(parent, group, x, y, width) {
  const attributes = { class: group.kind, transform: `translate(${x},${y})` };
  attributes[group.kind === "switch" ? "data-switch" : "data-port"] = group.id;
  const g = svgElement(parent, "g", attributes);
  svgElement(g, "rect", { width, height: groupHeight(group), rx: 6 });
  const label = { switch: "PCIe switch ", port: "root port ", root: "" }[group.kind] + group.id;
  svgElement(g, "text", { x: 8, y: 16, class: "label" }, label);
  group.devices.forEach((d, index) => drawDevice(
    g, d, TOPO.pad, TOPO.groupHeader + index * (TOPO.device + TOPO.deviceGap),
    width - 2 * TOPO.pad));
}

// One host's picture as an <svg>, scaled down (never up) to the width it is given.
function topologySvg(host, devices) {
  const columns = topologyColumns(host, devices);
  const heights = columns.map((c) => TOPO.header + c.groups.reduce(
    (sum, group) => sum + groupHeight(group) + TOPO.gap, 0));
  const width = TOPO.gap + columns.length * (TOPO.column + TOPO.gap);
  const height = Math.max(60, ...heights) + TOPO.gap;
  const svg = svgElement(null, "svg", { viewBox: `0 0 ${width} ${height}`, width, height,
                                        class: "topology", role: "img",
                                        "aria-label": `PCIe and NUMA topology of ${host.id}` });
  svg.style.maxWidth = "100%";
  svg.style.height = "auto";
  columns.forEach((c, index) => {
    const x = TOPO.gap + index * (TOPO.column + TOPO.gap);
    const g = svgElement(svg, "g", { class: "numa-node", "data-node": c.node,
                                     transform: `translate(${x},${TOPO.gap / 2})` });
    svgElement(g, "rect", { width: TOPO.column, height: heights[index], rx: 8 });
    svgElement(g, "text", { x: 10, y: 18, class: "label" }, c.label[0]);
    svgElement(g, "text", { x: 10, y: 34 }, c.label[1]);
    let y = TOPO.header;
    for (const group of c.groups) {
      drawGroup(g, group, TOPO.pad, y, TOPO.column - 2 * TOPO.pad);
      y += groupHeight(group) + TOPO.gap;
    }
  });
  return svg;
}

// Pictures of the hosts in scope (a few at most: choose a host to see one of many).
function drawTopology(container, hosts, devices) {
  container.replaceChildren();
  if (hosts.length > TOPO.maxHosts) {
    container.textContent = `Choose a host above to see its topology (${hosts.length} hosts ` +
                            "in scope).";
    return;
  }
  for (const host of hosts) {
    const figure = document.createElement("figure");
    figure.dataset.host = host.id;
    const caption = document.createElement("figcaption");
    caption.textContent = host.id;
    figure.append(caption, topologySvg(host, devices.filter((d) => d.host_id === host.id)));
    container.appendChild(figure);
  }
}
