// ComfyUI-WaDi front-end: show a .lorad file's metadata on the LoRaD nodes when a file is picked.
// Reads GET /wadi/lorad_info?name=... (registered by the pack's Python side at load time).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODES = new Set(["WaDiLoadLoRaD", "WaDiCheckpointLoader", "WaDiLoRaDInfo"]);
const INFO = "lorad_info";

async function fetchInfo(name) {
  const res = await api.fetchApi(`/wadi/lorad_info?name=${encodeURIComponent(name)}`);
  const body = await res.json();
  return res.ok ? body.text : `error: ${body.error}`;
}

function infoWidget(node) {
  let w = node.widgets?.find((x) => x.name === INFO);
  if (!w) {
    const el = document.createElement("textarea");
    el.readOnly = true;
    el.rows = 6;
    el.style.cssText = "width:100%;font:11px monospace;opacity:0.85;resize:vertical";
    w = node.addDOMWidget(INFO, "wadi_info", el, { serialize: false, getValue: () => el.value, setValue: () => {} });
    w.el = el;
  }
  return w;
}

async function show(node, name) {
  if (!name) return;
  const w = infoWidget(node);
  w.el.value = "reading ...";
  try {
    w.el.value = await fetchInfo(name);
  } catch (e) {
    w.el.value = `error: ${e}`;
  }
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "wadi.lorad.info",
  async nodeCreated(node) {
    if (!NODES.has(node.comfyClass)) return;
    const pick = node.widgets?.find((w) => w.name === "lorad_name");
    if (!pick) return;
    const previous = pick.callback;
    pick.callback = function (value, ...rest) {
      const r = previous?.apply(this, [value, ...rest]);
      show(node, value);
      return r;
    };
    // Workflows loaded from disk set values without the callback: show once the graph settles.
    setTimeout(() => show(node, pick.value), 0);
  },
});
