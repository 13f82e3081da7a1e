// WaDi trainer in ComfyUI's sidebar: the Gradio app (127.0.0.1) in an iframe, plus job
// status and stop through the pack routes (nodes/routes_tab.py).  Job text is put in the
// page with textContent only, never as HTML.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const POLL_MS = 2000;

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const c of children) node.append(c);
  return node;
}

async function call(path, method = "GET") {
  const res = await api.fetchApi(path, { method });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `${method} ${path}: HTTP ${res.status}`);
  return body;
}

function jobRow(job, onStop) {
  const active = ["queued", "running", "stopping"].includes(job.status);
  const row = el("li", { className: "wadi-job" },
    el("b", { textContent: job.status }), " ",
    el("span", { textContent: job.id }),
    el("div", { className: "wadi-job-progress", textContent: job.progress || "" }),
    el("div", { className: "wadi-job-message", textContent: job.message || "" }));
  if (active && job.status !== "stopping") {
    row.append(el("button", { textContent: "Stop", className: "wadi-stop", onclick: () => onStop(job.id) }));
  }
  return row;
}

function render(root) {
  root.replaceChildren();
  const status = el("div", { className: "wadi-status", textContent: "checking the trainer app…" });
  const startBtn = el("button", { textContent: "Start trainer app", className: "wadi-start-app" });
  const openLink = el("a", { textContent: "open in a new window", target: "_blank", rel: "noopener" });
  const frame = el("iframe", { className: "wadi-frame", title: "WaDi trainer" });
  frame.style.cssText = "width:100%;height:70vh;border:0;display:none;background:#fff";
  const jobs = el("ul", { className: "wadi-jobs" });
  jobs.style.cssText = "list-style:none;padding:0;font-size:12px";
  root.append(el("div", { style: "padding:8px" }, el("h3", { textContent: "WaDi trainer" }),
    status, startBtn, " ", openLink, frame, el("h4", { textContent: "Jobs" }), jobs));

  const stop = async (id) => {
    try { await call(`/wadi/jobs/${encodeURIComponent(id)}/stop`, "POST"); } catch (e) { status.textContent = e.message; }
    refresh();
  };
  startBtn.onclick = async () => {
    startBtn.disabled = true;
    try { await call("/wadi/tab/start", "POST"); status.textContent = "starting…"; }
    catch (e) { status.textContent = e.message; startBtn.disabled = false; }
  };

  let timer = null;
  async function refresh() {
    if (!root.isConnected) { clearInterval(timer); return; }
    let data;
    try { data = await call("/wadi/jobs"); } catch (e) { status.textContent = e.message; return; }
    const a = data.app || {};
    openLink.href = a.url || "";
    if (a.running) {
      status.textContent = `trainer app: ${a.url}`;
      startBtn.style.display = "none";
      if (frame.src !== a.url) frame.src = a.url;
      frame.style.display = "block";
    } else {
      status.textContent = a.starting ? "trainer app starting…" : "trainer app not running";
      startBtn.style.display = "";
      startBtn.disabled = !!a.starting;
      frame.style.display = "none";
    }
    jobs.replaceChildren(...(data.jobs || []).map((j) => jobRow(j, stop)));
  }
  refresh();
  timer = setInterval(refresh, POLL_MS);
}

app.registerExtension({
  name: "wadi.trainerTab",
  setup() {
    const mgr = app.extensionManager;
    if (!mgr || typeof mgr.registerSidebarTab !== "function") {
      console.warn("WaDi: this ComfyUI frontend has no sidebar tabs; run `wadi tab` and open http://127.0.0.1:7861/");
      return;
    }
    mgr.registerSidebarTab({
      id: "wadi-trainer", icon: "pi pi-bolt", title: "WaDi", tooltip: "WaDi trainer (one-step distillation)",
      type: "custom", render,
    });
  },
});
