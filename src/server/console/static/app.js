// switchboard console: the live toggle of the events page and the playground's keyboard
// shortcut. Every page works without this file; it only builds DOM nodes with textContent, so
// nothing from an event is ever parsed as HTML.
"use strict";

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  return td;
}

function eventRow(e) {
  const tr = document.createElement("tr");
  tr.dataset.id = e.id;
  tr.className = "fresh";
  const when = document.createElement("td");
  const a = document.createElement("a");
  a.href = "/console/events/" + encodeURIComponent(e.id);
  const t = document.createElement("time");
  t.textContent = e.received;
  a.appendChild(t);
  when.appendChild(a);
  tr.appendChild(when);
  tr.appendChild(cell(e.event_type));
  tr.appendChild(cell(e.lead_email || "—"));
  tr.appendChild(cell(e.campaign_id || "—"));
  const ds = document.createElement("td");
  if (!e.deliveries.length) {
    const s = document.createElement("span");
    s.className = "muted";
    s.textContent = "matched no rule";
    ds.appendChild(s);
  }
  for (const d of e.deliveries) {
    const s = document.createElement("span");
    s.className = "chip " + d.status;
    s.title = d.destination;
    s.textContent = d.rule + ": " + d.status;
    ds.appendChild(s);
    ds.appendChild(document.createTextNode(" "));
  }
  tr.appendChild(ds);
  return tr;
}

function setUpLive() {
  const table = document.getElementById("events");
  const toggle = document.getElementById("live-toggle");
  const box = document.getElementById("live");
  if (!table || !toggle || !box) return;
  toggle.hidden = false;
  let source = null;
  const rows = document.getElementById("event-rows");
  const start = () => {
    source = new EventSource("/console/live?" + table.dataset.liveSrc);
    source.addEventListener("event", (m) => {
      const e = JSON.parse(m.data);
      if (rows.querySelector('tr[data-id="' + CSS.escape(e.id) + '"]')) return;
      rows.insertBefore(eventRow(e), rows.firstChild);
      const none = document.getElementById("no-events");
      if (none) none.remove();
    });
  };
  box.addEventListener("change", () => {
    if (box.checked) start();
    else if (source) { source.close(); source = null; }
  });
  if (new URLSearchParams(location.hash.slice(1)).get("live") === "1") {
    box.checked = true;
    start();
  }
}

function setUpPlayground() {
  const form = document.getElementById("playground-form");
  if (!form) return;
  form.addEventListener("keydown", (k) => {
    if (k.key === "Enter" && (k.ctrlKey || k.metaKey)) {
      k.preventDefault();
      document.getElementById("run").click();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpLive();
  setUpPlayground();
});
