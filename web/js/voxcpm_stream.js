// VoxCPM Stream Preview: play the speech while it is generated.
//
// The server sends "voxcpm.stream_start" then one "voxcpm.chunk" per generated patch (base64 16-bit PCM, index,
// sample_rate, final, node, prompt_id) to the tab that queued the prompt (nodes/stream.py). Chunks are scheduled
// back to back on a Web Audio clock running at the model's own sample rate, so they join sample-exactly with no
// resampling at the seams. Only one stream plays at a time: a new run stops the previous one, and messages of any
// other prompt are ignored. Cancel (execution_interrupted) and errors stop playback at once. When the run finishes,
// the node's ordinary audio player (ComfyUI's AUDIO_UI widget) gets the whole clip from the node's ui output.
//
// Plain ES module, no build step. It reaches ComfyUI only through the frontend's public shims.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPE = "VoxCPMStreamPreview";
const LEAD_SECONDS = 0.2; // the first chunk starts this long after it arrives (absorbs jitter between steps)
const GUARD_SECONDS = 0.02; // a late chunk is scheduled at least this far ahead of the audio clock
const PEAK_SECONDS = 0.01; // waveform resolution
const WIDGET_HEIGHT = 96;

// ----------------------------------------------------------------------------------------------- audio clock

const contexts = new Map(); // sample rate -> AudioContext (one per model rate, reused across runs)

function audioContextFor(rate) {
  let ctx = contexts.get(rate);
  if (!ctx || ctx.state === "closed") {
    try {
      ctx = new AudioContext({ sampleRate: rate, latencyHint: "interactive" });
    } catch (error) {
      console.warn(`VoxCPM stream: no AudioContext at ${rate} Hz (${error}); the browser will resample`);
      ctx = new AudioContext({ latencyHint: "interactive" });
    }
    contexts.set(rate, ctx);
  }
  if (ctx.state === "suspended") ctx.resume().catch(() => {});
  return ctx;
}

function decodePcm16(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  const out = new Float32Array(bytes.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(2 * i, true) / 32767;
  return out;
}

// ----------------------------------------------------------------------------------------------- one run

class StreamSession {
  constructor(start, view) {
    this.promptId = start.prompt_id;
    this.node = start.node;
    this.sampleRate = start.sample_rate;
    this.maxChunks = start.max_chunks;
    this.view = view; // NodeView or null (node not on the canvas, e.g. inside a subgraph)
    this.ctx = audioContextFor(this.sampleRate);
    this.startedAt = performance.now(); // arrival of stream_start: generation begins
    this.state = "waiting"; // waiting -> playing -> done | cancelled | error | replaced
    this.log = []; // one entry per chunk: {index, samples, at, gap, arrivedMs}
    this.outOfOrder = 0;
    this.frames = 0; // samples received (and scheduled)
    this.base = null; // audio-clock time of sample 0 (moves forward only after an underrun)
    this.firstAudioMs = null; // time to first audio: stream_start -> first chunk starts sounding
    this.finishedMs = null; // generation time (stream_start -> final chunk)
    this.sources = new Set();
    this.peaks = []; // [min, max] per PEAK_SECONDS
    this.pending = new Float32Array(0);
  }

  get seconds() {
    return this.frames / this.sampleRate;
  }

  get live() {
    return this.state === "waiting" || this.state === "playing";
  }

  add(chunk) {
    const expected = this.log.length;
    if (chunk.index !== expected) this.outOfOrder += 1;
    if (chunk.final) {
      this.finishedMs = performance.now() - this.startedAt;
      this.state = "done";
      this.finalIndex = chunk.index;
      return;
    }
    const samples = decodePcm16(chunk.data);
    const ctx = this.ctx;
    const buffer = ctx.createBuffer(1, samples.length, this.sampleRate);
    buffer.copyToChannel(samples, 0);
    const now = ctx.currentTime;
    if (this.base === null) this.base = now + LEAD_SECONDS;
    let at = this.base + this.frames / this.sampleRate;
    let gap = 0;
    if (at < now + GUARD_SECONDS) {
      // Underrun: generation is slower than playback. Shift the clock; the gap is recorded, never hidden.
      gap = now + GUARD_SECONDS - at;
      this.base += gap;
      at = this.base + this.frames / this.sampleRate;
    }
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    source.onended = () => this.sources.delete(source);
    source.start(at);
    this.sources.add(source);
    if (this.firstAudioMs === null) this.firstAudioMs = performance.now() - this.startedAt + (at - now) * 1000;
    this.log.push({ index: chunk.index, samples: samples.length, at, gap, arrivedMs: performance.now() - this.startedAt });
    this.frames += samples.length;
    this.addPeaks(samples);
    if (this.state === "waiting") this.state = "playing";
  }

  addPeaks(samples) {
    const per = Math.max(1, Math.round(PEAK_SECONDS * this.sampleRate));
    let data = samples;
    if (this.pending.length) {
      data = new Float32Array(this.pending.length + samples.length);
      data.set(this.pending);
      data.set(samples, this.pending.length);
    }
    let i = 0;
    for (; i + per <= data.length; i += per) {
      let lo = 0, hi = 0;
      for (let j = i; j < i + per; j++) {
        if (data[j] < lo) lo = data[j];
        if (data[j] > hi) hi = data[j];
      }
      this.peaks.push([lo, hi]);
    }
    this.pending = data.slice(i);
  }

  stop(state) {
    if (this.stoppedAt === undefined || this.sources.size) this.stoppedAt = this.ctx.currentTime;
    for (const source of this.sources) {
      try {
        source.stop();
      } catch {}
    }
    this.sources.clear();
    if (this.live || (state === "replaced" && this.state === "done")) this.state = state;
  }

  // Seconds of this run's audio played so far (gaps excluded).
  playedSeconds() {
    if (this.base === null) return 0;
    const now = this.stoppedAt ?? this.ctx.currentTime;
    let played = 0;
    for (const entry of this.log) {
      if (now <= entry.at) break;
      played += Math.min(now - entry.at, entry.samples / this.sampleRate);
    }
    return played;
  }

  // Generation time / audio time: below 1 means faster than realtime.
  realtimeFactor() {
    if (!this.frames) return null;
    const elapsed = (this.finishedMs ?? performance.now() - this.startedAt) / 1000;
    return elapsed / this.seconds;
  }

  summary() {
    return {
      promptId: this.promptId, node: this.node, sampleRate: this.sampleRate, contextRate: this.ctx.sampleRate,
      state: this.state, chunks: this.log.length, finalIndex: this.finalIndex ?? null, outOfOrder: this.outOfOrder,
      seconds: this.seconds, firstAudioMs: this.firstAudioMs, finishedMs: this.finishedMs,
      realtimeFactor: this.realtimeFactor(), activeSources: this.sources.size, playedSeconds: this.playedSeconds(),
      stoppedAt: this.stoppedAt ?? null, clock: this.ctx.currentTime,
      log: this.log.map((e) => ({ ...e })),
    };
  }
}

// ----------------------------------------------------------------------------------------------- node widget

class NodeView {
  constructor(node) {
    this.node = node;
    this.element = document.createElement("div");
    this.element.style.cssText = "display:flex;flex-direction:column;gap:2px;width:100%;height:100%;" +
      "font:11px sans-serif;color:var(--input-text,#ddd);box-sizing:border-box;";
    this.status = document.createElement("div");
    this.status.style.cssText = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;min-height:14px;";
    this.status.textContent = "Live preview: queue the prompt to hear it while it is generated.";
    this.canvas = document.createElement("canvas");
    this.canvas.style.cssText = "width:100%;flex:1;min-height:40px;border-radius:4px;" +
      "background:var(--comfy-input-bg,#222);";
    this.element.append(this.status, this.canvas);
    this.session = null;
    this.frame = null;
  }

  show(session) {
    this.session = session;
    this.kick();
  }

  kick() {
    if (this.frame === null) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.frame = null;
    const session = this.session;
    if (!session) return;
    this.status.textContent = describe(session);
    const canvas = this.canvas;
    const width = Math.max(1, canvas.clientWidth), height = Math.max(1, canvas.clientHeight);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, width, height);
    const peaks = session.peaks;
    const total = Math.max(peaks.length, Math.round(1 / PEAK_SECONDS)); // at least 1 s wide
    const mid = height / 2;
    g.fillStyle = session.state === "cancelled" || session.state === "error" ? "#a55" : "#6ab0f3";
    for (let x = 0; x < width; x++) {
      const from = Math.floor((x * total) / width), to = Math.max(from + 1, Math.floor(((x + 1) * total) / width));
      let lo = 0, hi = 0;
      for (let i = from; i < to && i < peaks.length; i++) {
        if (peaks[i][0] < lo) lo = peaks[i][0];
        if (peaks[i][1] > hi) hi = peaks[i][1];
      }
      if (hi > lo) g.fillRect(x, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
    }
    const played = session.playedSeconds() / (total * PEAK_SECONDS);
    g.fillStyle = "#fff";
    g.fillRect(Math.min(width - 1, played * width), 0, 1, height);
    if (session.live || session.sources.size) this.kick();
  }
}

function describe(session) {
  const parts = [];
  const label = { waiting: "generating", playing: "streaming", done: "done", cancelled: "cancelled", error: "error",
    replaced: "stopped (new run)" }[session.state];
  parts.push(label);
  if (session.firstAudioMs !== null) parts.push(`first audio ${(session.firstAudioMs / 1000).toFixed(2)} s`);
  const rtf = session.realtimeFactor();
  if (rtf !== null) parts.push(`RTF ${rtf.toFixed(2)}`);
  parts.push(`${session.seconds.toFixed(2)} s, ${session.log.length} chunks`);
  return parts.join(" · ");
}

// ----------------------------------------------------------------------------------------------- the controller

class Controller {
  constructor() {
    this.current = null;
    this.sessions = []; // recent runs, newest last (summaries are read by the browser test)
    this.ignored = 0; // chunks of a prompt that is not the current stream
  }

  viewFor(nodeId) {
    const node = app.graph?.getNodeById?.(Number(nodeId)) ?? app.graph?.getNodeById?.(nodeId);
    return node?.voxcpmStream ?? null;
  }

  start(detail) {
    if (this.current) this.current.stop("replaced"); // one stream at a time: the new run takes over
    const view = this.viewFor(detail.node);
    this.current = new StreamSession(detail, view);
    this.sessions.push(this.current);
    if (this.sessions.length > 20) this.sessions.shift();
    view?.show(this.current);
  }

  chunk(detail) {
    const session = this.current;
    if (!session || session.promptId !== detail.prompt_id || session.node !== detail.node || !session.live) {
      this.ignored += 1;
      return;
    }
    session.add(detail);
    session.view?.kick();
  }

  end(detail, state) {
    const session = this.current;
    if (session && (!detail?.prompt_id || detail.prompt_id === session.promptId) && session.live) {
      session.stop(state);
      session.view?.kick();
    }
  }
}

const controller = new Controller();

app.registerExtension({
  name: "voxcpm.streamPreview",
  controller,

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    // ComfyUI's own audio player widget; it shows the ui.audio file the node returns at the end.
    nodeData.input.required.audioUI = ["AUDIO_UI", {}];
  },

  nodeCreated(node) {
    if (node.comfyClass !== NODE_TYPE) return;
    const view = new NodeView(node);
    node.voxcpmStream = view;
    const widget = node.addDOMWidget("voxcpm_stream", "voxcpm_stream", view.element, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => WIDGET_HEIGHT,
      getMaxHeight: () => WIDGET_HEIGHT,
    });
    widget.serialize = false; // not part of the saved workflow's widgets_values
  },

  async setup() {
    api.addEventListener("voxcpm.stream_start", ({ detail }) => controller.start(detail));
    api.addEventListener("voxcpm.chunk", ({ detail }) => controller.chunk(detail));
    api.addEventListener("execution_interrupted", ({ detail }) => controller.end(detail, "cancelled"));
    api.addEventListener("execution_error", ({ detail }) => controller.end(detail, "error"));
  },
});
