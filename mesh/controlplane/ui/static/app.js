// Meshgate dashboard: row filtering and the live traffic graph. No dependencies, nothing fetched
// from outside this control plane.
"use strict";

function filterRows(input) {
  const rows = document.querySelectorAll(input.dataset.filter);
  const needle = input.value.trim().toLowerCase();
  rows.forEach((row) => {
    const text = (row.dataset.search || row.textContent).toLowerCase();
    row.hidden = needle !== "" && !text.includes(needle);
  });
}

const SVG = "http://www.w3.org/2000/svg";

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function layout(nodes, width, height) {
  // The gateway (the edge) on the left, the others on a circle: stable between refreshes.
  const pos = {};
  const others = nodes.filter((n) => n !== "gateway");
  const cx = width * 0.58, cy = height / 2, r = Math.min(width, height) * 0.36;
  if (nodes.includes("gateway")) pos.gateway = { x: width * 0.1, y: cy };
  others.forEach((name, i) => {
    const angle = Math.PI * (0.5 + (2 * i) / Math.max(others.length, 1)) - Math.PI;
    pos[name] = { x: cx + r * Math.cos(angle), y: cy + r * Math.sin(angle) };
  });
  return pos;
}

function label(edge) {
  const p99 = edge.p99Ms === null ? "" : ` · p99 ${edge.p99Ms.toFixed(1)} ms`;
  const denied = edge.deniedRps > 0 ? ` · denied ${edge.deniedRps.toFixed(2)}/s` : "";
  return `${edge.rps.toFixed(2)} rps · ${(edge.errorRate * 100).toFixed(1)}% err${p99}${denied}`;
}

function drawGraph(box, data) {
  const width = box.clientWidth || 900, height = box.clientHeight || 460;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  const defs = el("defs");
  for (const [id, color] of [["arrow", "#3a3f7a"], ["arrow-denied", "#b3261e"]]) {
    const marker = el("marker", { id, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
    marker.appendChild(el("path", { d: "M0,0 L10,5 L0,10 z", fill: color }));
    defs.appendChild(marker);
  }
  svg.appendChild(defs);
  const pos = layout(data.nodes, width, height);
  const radius = 34;
  for (const edge of data.edges) {
    const a = pos[edge.source], b = pos[edge.target];
    if (!a || !b) continue;
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
    const ux = dx / len, uy = dy / len;
    // two calls in opposite directions: offset each to its own side
    const ox = -uy * 6, oy = ux * 6;
    const cls = "edge" + (edge.denied ? " denied" : "") + (edge.errorRate > 0 ? " errors" : "");
    const g = el("g", { class: cls, "data-source": edge.source, "data-target": edge.target });
    g.appendChild(el("line", {
      x1: a.x + ux * radius + ox, y1: a.y + uy * radius + oy,
      x2: b.x - ux * radius + ox, y2: b.y - uy * radius + oy,
      "marker-end": edge.denied ? "url(#arrow-denied)" : "url(#arrow)",
    }));
    g.appendChild(el("text", { x: (a.x + b.x) / 2 + ox * 2, y: (a.y + b.y) / 2 + oy * 2 - 4 }, label(edge)));
    g.appendChild(el("title", {}, `${edge.source} -> ${edge.target}: ${label(edge)}; policy ${edge.policy || "?"}`));
    svg.appendChild(g);
  }
  for (const name of data.nodes) {
    const p = pos[name];
    const g = el("g", { class: "node", "data-name": name });
    g.appendChild(el("circle", { cx: p.x, cy: p.y, r: radius }));
    g.appendChild(el("text", { x: p.x, y: p.y }, name));
    svg.appendChild(g);
  }
  box.replaceChildren(svg);
  box.dataset.edges = String(data.edges.length);
}

function fillEdgeTable(data) {
  const body = document.querySelector("#edges tbody");
  if (!body) return;
  body.replaceChildren(...data.edges.map((e) => {
    const tr = document.createElement("tr");
    if (e.denied) tr.className = "denied";
    const cells = [e.source, e.target, e.rps.toFixed(2), `${(e.errorRate * 100).toFixed(1)}%`,
      e.p99Ms === null ? "—" : e.p99Ms.toFixed(1), e.deniedRps.toFixed(2), e.policy || "—"];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  }));
}

async function refreshGraph(box) {
  try {
    const response = await fetch(box.dataset.src, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) { window.location = "/ui/login"; return; }
    const data = await response.json();
    drawGraph(box, data);
    fillEdgeTable(data);
    box.dataset.updated = String(Date.now());
  } catch (err) {
    box.dataset.error = String(err);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("input[data-filter]").forEach((input) => {
    input.addEventListener("input", () => filterRows(input));
  });
  const box = document.getElementById("graph");
  if (box) {
    refreshGraph(box);
    setInterval(() => refreshGraph(box), 2000);
  }
});
