"""The page at ``/``: one HTML document, no external assets. Choose or drop image files, or use the browser's
camera at a chosen interval; each image is sent to ``POST /predict?overlay=1`` and the page shows the overlay,
the score and the decision, and a running count. The sensitivity slider re-asks the server for the last
image (``&sensitivity=S``: both thresholds divided by S). An API key, when the service has one, is typed
once and sent as ``X-API-Key``."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CFLOW-AD inspection</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;margin:1.5em;max-width:60em}
 #drop{border:2px dashed #888;padding:1.2em;text-align:center;margin:.8em 0}
 #drop.over{background:#eef}
 #result{font-size:1.4em;margin:.6em 0} .defective{color:#c00;font-weight:bold} .good{color:#070;font-weight:bold}
 #overlay{max-width:100%;border:1px solid #ccc} .row{margin:.5em 0} #error{color:#c00}
 video{max-width:20em;display:none}
</style></head><body>
<h1>CFLOW-AD inspection</h1>
<div class="row" id="model">model: loading...</div>
<div class="row">API key (if the service has one): <input id="key" type="password" size="24"></div>
<div id="drop">Drop image files here, or <input id="files" type="file" accept="image/*" multiple></div>
<div class="row">Camera: <button id="camera">start</button> every <input id="interval" type="number" value="2"
 min="0.2" step="0.2" style="width:4em"> s <video id="video" autoplay playsinline muted></video></div>
<div class="row">Sensitivity: <input id="sensitivity" type="range" min="-2" max="2" step="0.1" value="0">
 <span id="sensitivity-value">1.00</span> (1 = the stored thresholds; 2 = flags at half the anomaly)</div>
<div id="result">no image yet</div>
<div class="row" id="counts">0 images: 0 defective, 0 good</div>
<div id="error"></div>
<img id="overlay" alt="">
<script>
const $ = id => document.getElementById(id);
let last = null, counts = {good: 0, defective: 0}, timer = null;
$('key').value = localStorage.getItem('cflow-key') || '';
$('key').onchange = () => { localStorage.setItem('cflow-key', $('key').value); loadModel(); };
function headers() { const k = $('key').value; return k ? {'X-API-Key': k} : {}; }
function sensitivity() { return Math.pow(2, parseFloat($('sensitivity').value)); }
async function loadModel() {
  const r = await fetch('/model', {headers: headers()});
  const j = await r.json();
  $('model').textContent = r.ok ? `model: ${j.file} (${j.runtime}, ${j.precision}), t_I ${j.thresholds.image_threshold.toPrecision(4)}`
                                : `model: ${j.error}`;
}
async function send(blob, name, counted) {
  const form = new FormData(); form.append('image', blob, name);
  const r = await fetch(`/predict?overlay=1&sensitivity=${sensitivity()}`, {method: 'POST', body: form, headers: headers()});
  const j = await r.json();
  if (!r.ok) { $('error').textContent = `${name}: ${j.error}`; return; }
  $('error').textContent = '';
  last = {blob, name};
  const decision = j.defective ? 'defective' : 'good';
  $('result').innerHTML = `${name}: <span id="decision" class="${decision}">${decision.toUpperCase()}</span> ` +
    `score <span id="score">${j.score.toFixed(4)}</span> (t_I ${j.thresholds.image_threshold.toFixed(4)})`;
  $('overlay').src = 'data:image/png;base64,' + j.overlay_png;
  if (counted) { counts[decision] += 1; }
  $('counts').textContent = `${counts.good + counts.defective} images: ${counts.defective} defective, ${counts.good} good`;
}
async function sendFiles(files) { for (const f of files) { await send(f, f.name, true); } }
$('files').onchange = e => sendFiles(e.target.files);
$('drop').ondragover = e => { e.preventDefault(); $('drop').classList.add('over'); };
$('drop').ondragleave = () => $('drop').classList.remove('over');
$('drop').ondrop = e => { e.preventDefault(); $('drop').classList.remove('over'); sendFiles(e.dataTransfer.files); };
$('sensitivity').oninput = () => { $('sensitivity-value').textContent = sensitivity().toFixed(2); };
$('sensitivity').onchange = () => { if (last) send(last.blob, last.name, false); };
$('camera').onclick = async () => {
  if (timer) { clearInterval(timer); timer = null; $('camera').textContent = 'start'; return; }
  const stream = await navigator.mediaDevices.getUserMedia({video: true});
  $('video').srcObject = stream; $('video').style.display = 'inline';
  $('camera').textContent = 'stop';
  timer = setInterval(() => {
    const v = $('video'), c = document.createElement('canvas');
    c.width = v.videoWidth; c.height = v.videoHeight;
    if (!c.width) return;
    c.getContext('2d').drawImage(v, 0, 0);
    c.toBlob(b => send(b, 'camera.png', true), 'image/png');
  }, 1000 * parseFloat($('interval').value));
};
loadModel();
</script></body></html>
"""
