"""VoxCPM Stream Preview in a real browser against a real ComfyUI (optional: CI has no ComfyUI).

    VOXCPM_COMFYUI=/path/to/ComfyUI [VOXCPM_COMFYUI_PYTHON=/path/to/its/python] python -m pytest tests/test_browser.py

Starts that ComfyUI (CPU, port VOXCPM_COMFYUI_PORT or 8190, temp/output/user folders in a pytest tmp dir, only this
package loaded, under a different folder name than usual), headless Debian `chromium` driven by `chromedriver` over
the WebDriver HTTP protocol (standard library only), loads workflows/voxcpm2_stream_preview.json in the real
frontend and queues it from the page. The model is a tiny random VoxCPM2 built here whose patches carry 640 ms of
audio each (like the real model, generation is then faster than playback on a CPU); a copy that never stops
generating by itself serves the Cancel test.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny  # noqa: E402
from package import ROOT  # noqa: E402

COMFYUI = os.environ.get("VOXCPM_COMFYUI")
PYTHON = os.environ.get("VOXCPM_COMFYUI_PYTHON", sys.executable)
PORT = int(os.environ.get("VOXCPM_COMFYUI_PORT", "8190"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FOLDER_NAME = "voxcpm_browser_test"  # not the usual folder name: the JS must not depend on it

if not COMFYUI:
    pytest.skip("browser test: set VOXCPM_COMFYUI to a ComfyUI folder to run it (CI has no ComfyUI)",
                allow_module_level=True)
if not (Path(COMFYUI) / "main.py").is_file():
    pytest.skip(f"browser test: VOXCPM_COMFYUI={COMFYUI} has no main.py", allow_module_level=True)
if not CHROMIUM or not CHROMEDRIVER:
    pytest.skip("browser test: needs chromium and chromedriver (Debian: apt-get install -y chromium chromium-driver)",
                allow_module_level=True)

WORKFLOW = json.loads((ROOT / "workflows" / "voxcpm2_stream_preview.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def build_models(root: Path) -> Path:
    """models/voxcpm/browser-v2 (VoxCPM2 layout, 640 ms of 48 kHz audio per patch) and browser-v2-nostop."""
    original = tiny.tiny_config_dict

    def long_patches(kind, **kw):
        config = original(kind, **kw)
        config["patch_size"] = 8
        config["audio_vae_config"].update(encoder_rates=[8, 8, 10, 2], decoder_rates=[8, 8, 10, 2, 3],
                                          decoder_dim=64)  # 16 kHz in, 48 kHz out, 12.5 latents/s
        return config

    tiny.tiny_config_dict = long_patches
    try:
        folder = tiny.build_tiny_checkpoint(root / "browser-v2", "v2")
    finally:
        tiny.tiny_config_dict = original
    nostop = root / "browser-v2-nostop"
    shutil.copytree(folder, nostop)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(nostop / "model.safetensors"))
    head = weights["stop_head.weight"]  # logits = head @ silu(stop_proj(h)); stop_proj channel 1 is constant
    head.zero_()
    head[0, 1] = 10.0  # "continue" always wins
    save_file(weights, str(nostop / "model.safetensors"))
    return root


class Browser:
    """The few WebDriver commands we need, over chromedriver's HTTP API."""

    def __init__(self, profile: Path):
        self.port = free_port()
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for(self._driver_ready, 30, "chromedriver")
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--autoplay-policy=no-user-gesture-required", "--window-size=1600,1000"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
                                                 "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
        self.session = http("POST", f"{self.base}/session", caps)["value"]["sessionId"]

    def _driver_ready(self):
        try:
            return http("GET", f"{self.base}/status", timeout=2)["value"]["ready"]
        except (urllib.error.URLError, OSError):
            return False

    def command(self, method, path, body=None, timeout=120):
        return http(method, f"{self.base}/session/{self.session}/{path}", body, timeout)["value"]

    def open(self, url):
        self.command("POST", "url", {"url": url})

    def js(self, script, *args):
        """Run an async function body in the page (await allowed); returns its JSON-able result."""
        wrapped = ("const done = arguments[arguments.length - 1];"
                   f"(async (...args) => {{ {script} }})(...Array.from(arguments).slice(0, -1))"
                   ".then(done, (e) => done({__error: String(e && e.stack || e)}));")
        value = self.command("POST", "execute/async", {"script": wrapped, "args": list(args)})
        if isinstance(value, dict) and "__error" in value:
            raise AssertionError(f"page script failed: {value['__error']}")
        return value

    def close(self):
        try:
            http("DELETE", f"{self.base}/session/{self.session}", timeout=30)
        finally:
            self.driver.terminate()
            self.driver.wait(30)


# ------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_browser")
    build_models(root / "models" / "voxcpm")
    (root / "custom_nodes").mkdir()
    (root / "custom_nodes" / FOLDER_NAME).symlink_to(ROOT, target_is_directory=True)
    config = root / "extra_model_paths.yaml"
    config.write_text(f"voxcpm_browser_test:\n  base_path: {root}\n  voxcpm: models/voxcpm\n"
                      f"  custom_nodes: custom_nodes\n", encoding="utf-8")
    for name in ("output", "input", "user"):
        (root / name).mkdir()
    log = open(root / "comfyui.log", "w")
    process = subprocess.Popen(
        [PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(PORT), "--disable-auto-launch",
         "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", str(config),
         "--disable-all-custom-nodes", "--whitelist-custom-nodes", FOLDER_NAME,
         "--output-directory", str(root / "output"), "--input-directory", str(root / "input"),
         "--temp-directory", str(root), "--user-directory", str(root / "user")],
        cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{PORT}"

    def up():
        if process.poll() is not None:
            raise AssertionError(f"ComfyUI exited: {(root / 'comfyui.log').read_text()[-3000:]}")
        try:
            return http("GET", f"{url}/object_info/VoxCPMStreamPreview", timeout=2)
        except (urllib.error.URLError, OSError):
            return None

    try:
        info = wait_for(up, 180, "ComfyUI to start")
        assert "VoxCPMStreamPreview" in info, (root / "comfyui.log").read_text()[-3000:]
        yield {"url": url, "root": root, "log": root / "comfyui.log"}
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    browser = Browser(tmp_path_factory.mktemp("chromium_profile"))
    try:
        browser.open(server["url"])
        wait_for(lambda: browser.js(
            "const a = window.comfyAPI?.app?.app;"
            "return !!(a && a.graph && a.extensions?.some((e) => e.name === 'voxcpm.streamPreview')"
            " && window.LiteGraph?.registered_node_types?.VoxCPMStreamPreview);"),
            120, "the ComfyUI page with our extension")
        yield browser
    finally:
        browser.close()


# ------------------------------------------------------------------------------------------------- page scripts

SETUP = """
const app = window.comfyAPI.app.app;
const controller = app.extensions.find((e) => e.name === 'voxcpm.streamPreview').controller;
const node = app.graph.nodes.find((n) => n.type === 'VoxCPMStreamPreview');
"""


def queue(page, model: str, text: str, seed: int) -> None:
    """Load the shipped workflow into the real graph, point it at a tiny model and queue it like the Queue button."""
    page.js("""
        const app = window.comfyAPI.app.app;
        const [workflow, model, text, seed] = args;
        await app.loadGraphData(structuredClone(workflow));
        const set = (type, name, value) => {
          const widget = app.graph.nodes.find((n) => n.type === type).widgets.find((w) => w.name === name);
          widget.value = value;
        };
        set('LoadVoxCPM', 'model', model);
        set('LoadVoxCPM', 'device', 'cpu');
        set('VoxCPMStreamPreview', 'text', text);
        set('VoxCPMStreamPreview', 'style', '');
        set('VoxCPMStreamPreview', 'steps', 4);
        set('VoxCPMStreamPreview', 'seed', seed);
        set('VoxCPMStreamPreview', 'control_after_generate', 'fixed');
        await app.queuePrompt(0, 1);
        return true;
    """, WORKFLOW, model, text, seed)


def sessions(page):
    return page.js(SETUP + "return controller.sessions.map((s) => s.summary());")


def history(server, prompt_id):
    return http("GET", f"{server['url']}/history/{prompt_id}").get(prompt_id)


# ------------------------------------------------------------------------------------------------- tests

def test_node_has_the_player_and_the_workflow_serializes_like_the_file(page):
    result = page.js("""
        const app = window.comfyAPI.app.app;
        await app.loadGraphData(structuredClone(args[0]));
        const node = app.graph.nodes.find((n) => n.type === 'VoxCPMStreamPreview');
        const saved = app.graph.serialize().nodes.find((n) => n.type === 'VoxCPMStreamPreview');
        return {widgets: node.widgets.map((w) => w.name), hasView: !!node.voxcpmStream,
                values: saved.widgets_values, scripts: Array.from(document.scripts).map((s) => s.src)};
    """, WORKFLOW)
    assert result["hasView"], result
    assert result["widgets"][-2:] == ["audioUI", "voxcpm_stream"]
    file_values = next(n for n in WORKFLOW["nodes"] if n["type"] == "VoxCPMStreamPreview")["widgets_values"]
    assert result["values"] == file_values  # the player widgets add nothing to saved workflows


def test_stream_plays_gap_free_and_leaves_the_whole_clip(page, server):
    start = len(sessions(page))
    queue(page, "browser-v2", "hello world", 3)

    def finished():  # one read of the sessions: two reads could see "waiting", then "playing"
        now = sessions(page)
        return now[-1] if len(now) > start and now[-1]["state"] not in ("waiting", "playing") else None

    s = wait_for(finished, 120, "the stream to finish")
    print("\nstream:", json.dumps({k: v for k, v in s.items() if k != "log"}))
    assert s["state"] == "done", s
    n = s["chunks"]
    assert n >= 3 and s["finalIndex"] == n and s["outOfOrder"] == 0
    assert [e["index"] for e in s["log"]] == list(range(n))  # arrived in order, none missing
    assert s["sampleRate"] == 48000 and s["contextRate"] == 48000  # the audio clock runs at the model's rate
    assert all(e["samples"] == 30720 for e in s["log"])  # 640 ms per patch
    for before, after in zip(s["log"], s["log"][1:]):  # each chunk starts exactly where the previous one ends
        assert after["gap"] == 0
        assert abs(after["at"] - (before["at"] + before["samples"] / 48000)) < 1e-9
    assert s["log"][0]["gap"] == 0
    assert 0 < s["firstAudioMs"] < 30000 and 0 < s["realtimeFactor"]
    assert abs(s["seconds"] - n * 0.64) < 1e-9

    # The audio clock really runs in this browser: the clip is heard to the end.
    wait_for(lambda: sessions(page)[-1]["playedSeconds"] >= s["seconds"] - 1e-6, 60, "playback to reach the end")
    # The node's ordinary audio player shows the whole clip (ui.audio -> ComfyUI's AUDIO_UI widget).
    player = wait_for(lambda: page.js(SETUP + """
        const audio = node.widgets.find((w) => w.name === 'audioUI').element;
        if (!audio.src || audio.readyState < 1) return null;
        return {src: audio.src, duration: audio.duration,
                text: node.voxcpmStream.status.textContent};
    """), 30, "the final clip in the node's audio player")
    print("player:", player)
    assert "filename=voxcpm_stream_" in player["src"] and "type=temp" in player["src"]
    assert abs(player["duration"] - s["seconds"]) < 0.01
    assert player["text"].startswith("done") and "first audio" in player["text"] and "RTF" in player["text"]
    record = history(server, s["promptId"])
    assert record["status"]["status_str"] == "success"


def test_cancel_stops_generation_and_playback_and_the_model_stays_usable(page, server):
    start = len(sessions(page))
    queue(page, "browser-v2-nostop", "hello world, this is a test. " * 3, 5)
    wait_for(lambda: len(sessions(page)) > start and sessions(page)[-1]["chunks"] >= 3, 120, "three chunks")
    at_cancel = page.js(SETUP + """
        const s = controller.current;
        const before = {chunks: s.log.length, activeSources: s.sources.size, time: s.ctx.currentTime,
                        scheduledEnd: s.base + s.frames / s.sampleRate, maxChunks: s.maxChunks};
        await window.comfyAPI.api.api.interrupt();   // what the Cancel button calls
        return before;
    """)
    wait_for(lambda: sessions(page)[-1]["state"] == "cancelled", 60, "the player to stop")
    time.sleep(2.0)  # any chunk still on its way would arrive now
    s = sessions(page)[-1]
    print("\ncancel:", json.dumps(at_cancel), json.dumps({k: v for k, v in s.items() if k != "log"}))
    assert at_cancel["activeSources"] > 0 and at_cancel["scheduledEnd"] > at_cancel["time"]  # it was playing
    assert s["activeSources"] == 0  # every scheduled source was stopped
    # Generation stopped within one step: after the press, at most the chunk already on its way over the websocket
    # and the one of the step the server was in (Cancel is checked right after each chunk is sent).
    assert s["chunks"] <= at_cancel["chunks"] + 2
    assert s["chunks"] < at_cancel["maxChunks"]
    assert s["finalIndex"] is None
    assert s["playedSeconds"] < at_cancel["scheduledEnd"] - s["log"][0]["at"]  # the rest is never heard
    record = wait_for(lambda: history(server, s["promptId"]), 30, "the interrupted prompt in /history")
    assert record["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in record["status"]["messages"])

    # The model is still usable: the same streaming workflow runs to the end again.
    queue(page, "browser-v2", "hello world", 3)
    wait_for(lambda: len(sessions(page)) > start + 1 and sessions(page)[-1]["state"] == "done", 120, "a new run")


def test_a_second_queued_prompt_does_not_mix_with_the_first(page, server):
    start = len(sessions(page))
    queue(page, "browser-v2", "hello world", 2)
    queue(page, "browser-v2", "hello world", 3)  # queued behind the first
    wait_for(lambda: len(sessions(page)) >= start + 2 and sessions(page)[-1]["state"] == "done", 180, "both runs")
    first, second = sessions(page)[start], sessions(page)[start + 1]
    print("\nfirst:", json.dumps({k: v for k, v in first.items() if k != "log"}))
    print("second:", json.dumps({k: v for k, v in second.items() if k != "log"}))
    assert first["promptId"] != second["promptId"]
    assert first["state"] == "replaced" and first["activeSources"] == 0  # stopped when the second began
    assert first["stoppedAt"] <= second["log"][0]["at"]  # nothing of the first sounds once the second plays
    assert second["outOfOrder"] == 0 and [e["index"] for e in second["log"]] == list(range(second["chunks"]))
    assert second["finalIndex"] == second["chunks"]
