/* Style Transfer web page: plain JavaScript, no build step, no dependencies.
 *
 * Talks to the API of this server (relative URLs, so the page also works behind a path prefix):
 *   GET  readyz        -> 200 ready / 503 loading (polled until ready)
 *   GET  v1/models     -> device + model metadata (the model picker)
 *   POST v1/stylize    -> one model: the image bytes, timing in X-Elapsed-Ms
 *   POST v1/compare    -> several models: JSON with data: URLs and timings
 *   POST v1/videos     -> a video and one model: 202 and a job (v1/models says whether videos work: `video`)
 *   GET  v1/videos/ID  -> the job's status, polled about once a second; its `result` is the MP4
 *   DELETE v1/videos/ID -> cancels the job or deletes its files (the page deletes what the user drops:
 *                          Clear, Cancel, another file, a new run; never on leaving or reloading the page)
 * The video jobs shown or waited for are remembered in localStorage (id, model, file name): after a reload
 * or in a new tab the page asks for each again, follows a running one and shows a finished one.
 * A multi-style model (several `styles` in v1/models) adds the `style` or `mix` field: style A, style B
 * and a blend slider (the weight of B); moving the slider stylizes the photo again.
 * Errors are JSON bodies {"error": {"code", "message"}} and are shown in #error.
 */
(() => {
  'use strict';

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  const els = {
    status: $('#status'),
    statusText: $('#status-text'),
    device: $('#device'),
    deviceName: $('#device-name'),
    form: $('#controls'),
    fileInput: $('#file-input'),
    formatNames: $('#format-names'),
    photoWord: $('#photo-word'),
    dropWhat: $('#drop-what'),
    videoFormats: $('#video-formats'),
    videoPreview: $('#video-preview'),
    dropzone: $('#dropzone'),
    dzEmpty: $('.dz-empty'),
    dzPreview: $('.dz-preview'),
    preview: $('#original-preview'),
    fileMeta: $('#file-meta'),
    clearFile: $('#clear-file'),
    models: $('#models'),
    selectAll: $('#select-all'),
    selectNone: $('#select-none'),
    styleMix: $('#style-mix'),
    styleModel: $('#style-model'),
    styleA: $('#style-a'),
    styleB: $('#style-b'),
    blend: $('#blend'),
    blendValue: $('#blend-value'),
    blendA: $('#blend-a'),
    blendB: $('#blend-b'),
    strength: $('#strength'),
    strengthValue: $('#strength-value'),
    preserve: $('#preserve-color'),
    maxSize: $('#max-size'),
    formatVideo: $('#format-video'),
    paintDefault: $('#paint-default'),
    resetOptions: $('#reset-options'),
    run: $('#run'),
    runLabel: $('#run-label'),
    runHint: $('#run-hint'),
    error: $('#error'),
    results: $('#results'),
    resultsMeta: $('#results-meta'),
    emptyState: $('#empty-state'),
    clearResults: $('#clear-results'),
    linkSliders: $('#link-sliders'),
    progress: $('#progress'),
    progressBar: $('#progress-bar'),
    progressFill: $('#progress-bar span'),
    progressLive: $('#progress-live'),
    progressLabel: $('#progress-label'),
    progressTime: $('#progress-time'),
    cancel: $('#cancel'),
    modelTemplate: $('#model-template'),
    resultTemplate: $('#result-template'),
    videoResultTemplate: $('#video-result-template'),
  };

  const DEFAULT_META = els.resultsMeta.textContent;
  // The formats the server reads, in words (from GET v1/models: AVIF only where its Pillow has libavif).
  let formatNames = els.formatNames.textContent;
  // The picker's image types (the server's, once known); video types are added when it stylizes videos.
  let imageAccept = els.fileInput.accept;

  const state = {
    ready: false,
    file: null,
    previewURL: null,
    // Whether this browser can show the chosen file itself (null: not known yet). Chrome and Firefox cannot
    // show a HEIC photo, which the server reads: its runs then go through v1/compare, which sends the
    // server's decoding of the photo back, for the preview and the before/after views.
    fileShown: null,
    models: [],            // from GET v1/models
    modelsLoaded: false,
    running: false,
    abort: null,
    resultURLs: [],        // object URLs owned by the results on screen
    sliderPos: 50,
    styleModel: null,      // the multi-style model whose styles the selectors show
    shownStyle: null,      // the style/mix fields of the last run (JSON), to skip identical re-runs
    rerun: false,          // the blend moved while a request ran: stylize again when it ends
    video: null,           // `video` of GET v1/models: enabled, reason, max_bytes, max_frames, media_types, suffixes
    videoKnown: false,     // v1/models has answered (an older server sends no `video`: no videos)
    isVideo: false,        // the chosen file is a video: the run is a video job with one model
    selectionTouched: false, // the user chose models: a video then keeps their choice
    runKind: null,         // 'image' or 'video' while running
    job: null,             // the video job being waited for: {id, controller, cancelled, ...}
    shownJobs: new Set(),  // ids of finished video jobs whose cards are on screen (deleted when dropped)
    resumed: false,        // the remembered video jobs were looked up (once, after v1/models answered)
    savedResults: null,    // results set aside during a run (skeletons shown), restored if it fails
  };

  // ------------------------------------------------------------------ formatting

  function formatBytes(n) {
    if (!Number.isFinite(n)) return '';
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function formatCount(n) {
    if (!Number.isFinite(n)) return '?';
    if (n < 1000) return String(n);
    if (n < 1e6) return `${(n / 1e3).toFixed(n < 1e4 ? 1 : 0)}k`;
    return `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)}M`;
  }

  function formatMs(ms) {
    if (!Number.isFinite(ms)) return 'n/a';
    if (ms < 10) return `${ms.toFixed(2)} ms`;
    if (ms < 1000) return `${ms.toFixed(1)} ms`;
    return `${Math.round(ms).toLocaleString('en-US')} ms`;
  }

  // Seconds as a clock: 5 -> "0:05", 754 -> "12:34", 3723 -> "1:02:03".
  function formatClock(seconds) {
    if (!Number.isFinite(seconds) || seconds < 0) return '–:––';
    const t = Math.round(seconds);
    const h = Math.floor(t / 3600);
    const m = Math.floor((t % 3600) / 60);
    const sec = String(t % 60).padStart(2, '0');
    return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
  }

  // A duration in words, roughly: "40 s", "12 min", "2 h".
  function formatAbout(seconds) {
    if (!Number.isFinite(seconds)) return '';
    if (seconds < 90) return `${Math.max(1, Math.round(seconds))} s`;
    if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min`;
    return `${Math.round(seconds / 3600)} h`;
  }

  // ["A", "B", "C"] -> "A, B or C".
  function orList(words) {
    return words.length > 1 ? `${words.slice(0, -1).join(', ')} or ${words[words.length - 1]}` : (words[0] || '');
  }

  function sentence(text) {
    const t = String(text || '').trim();
    return !t || /[.!?]$/.test(t) ? t : `${t}.`;
  }

  // The server names paths from its root ("/v1/videos/ID/result"); the page stays relative so that it
  // works behind a path prefix.
  function relativeURL(path) {
    return String(path || '').replace(/^\/+/, '');
  }

  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      if (signal && signal.aborted) {
        reject(new DOMException('Aborted', 'AbortError'));
        return;
      }
      const timer = setTimeout(resolve, ms);
      if (signal) {
        signal.addEventListener('abort', () => {
          clearTimeout(timer);
          reject(new DOMException('Aborted', 'AbortError'));
        }, { once: true });
      }
    });
  }

  function prettyStyle(name) {
    if (!name) return 'Untitled style';
    return name.replace(/[_-]+/g, ' ').replace(/\s+/g, ' ').trim()
      .replace(/\b([a-z])/g, (m) => m.toUpperCase());
  }

  // A style or a mix as the server names it ("wave", "starry=0.6,wave=0.4") -> "Wave", "Starry 60% · Wave 40%".
  function styleLabel(text) {
    if (!text || !text.includes('=')) return prettyStyle(text);
    return text.split(',').map((part) => {
      const cut = part.lastIndexOf('=');
      return `${prettyStyle(part.slice(0, cut))} ${Math.round(Number(part.slice(cut + 1)) * 100)}%`;
    }).join(' · ');
  }

  function fileStem(name) {
    const base = (name || 'photo').replace(/^.*[\\/]/, '');
    const dot = base.lastIndexOf('.');
    return (dot > 0 ? base.slice(0, dot) : base).replace(/[^\w.-]+/g, '_') || 'photo';
  }

  function extOfMime(mime) {
    return /jpe?g/i.test(mime || '') ? 'jpg' : 'png';
  }

  function mimeOfDataURL(url) {
    const m = /^data:([^;,]+)/.exec(url || '');
    return m ? m[1] : '';
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(message, code, status) {
      super(message);
      this.name = 'ApiError';
      this.code = code;
      this.status = status;
    }
  }

  // An error from a response's status and body ({"error": {"code", "message"}} from this server).
  function apiError(status, statusText, text, retryAfter) {
    let code = `http_${status}`;
    let message = `${status} ${statusText || 'error'}`.trim();
    try {
      const body = JSON.parse(text);
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      } else if (body && body.detail) {
        message = typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail);
      } else if (body && body.message) {
        message = body.message;
      }
    } catch (_) {
      if (text && text.length < 300) message = text;
    }
    const err = new ApiError(message, code, status);
    const wait = Number(retryAfter);
    if (retryAfter && Number.isFinite(wait)) err.retryAfter = wait;
    return err;
  }

  async function errorFromResponse(res) {
    let text = '';
    try { text = await res.text(); } catch (_) { /* body unreadable */ }
    return apiError(res.status, res.statusText, text, res.headers.get('Retry-After'));
  }

  async function request(url, options = {}) {
    let res;
    try {
      res = await fetch(url, { cache: 'no-store', ...options });
    } catch (err) {
      if (err && err.name === 'AbortError') throw err;
      throw new ApiError('Cannot reach the server. Is it still running?', 'network_error', 0);
    }
    if (!res.ok) throw await errorFromResponse(res);
    return res;
  }

  // POST a form with upload progress (fetch reports none; a video can take a while to send).
  // Resolves with the XMLHttpRequest once the server answers 2xx.
  function upload(url, form, { signal, onProgress } = {}) {
    return new Promise((resolve, reject) => {
      const aborted = () => new DOMException('The upload was cancelled.', 'AbortError');
      if (signal && signal.aborted) {
        reject(aborted());
        return;
      }
      const xhr = new XMLHttpRequest();
      xhr.open('POST', url);
      xhr.upload.addEventListener('progress', (e) => {
        if (e.lengthComputable && e.total > 0 && onProgress) onProgress(e.loaded / e.total);
      });
      xhr.addEventListener('load', () => {
        if (xhr.status >= 200 && xhr.status < 300) resolve(xhr);
        else reject(apiError(xhr.status, xhr.statusText, xhr.responseText, xhr.getResponseHeader('Retry-After')));
      });
      xhr.addEventListener('error', () => {
        reject(new ApiError('Cannot reach the server. Is it still running?', 'network_error', 0));
      });
      xhr.addEventListener('abort', () => reject(aborted()));
      if (signal) signal.addEventListener('abort', () => xhr.abort(), { once: true });
      xhr.send(form);
    });
  }

  // ------------------------------------------------------------------ errors

  const ERROR_TITLES = {
    0: 'Connection problem',
    400: 'Bad request',
    404: 'Not found',
    413: 'Image too large',
    415: 'Unsupported image',
    422: 'Invalid input',
    503: 'Server busy',
    504: 'Timed out',
  };

  function showError(err) {
    const status = err && Number.isFinite(err.status) ? err.status : null;
    const title = (err && err.title) || ERROR_TITLES[status] || (status >= 500 ? 'Server error' : 'Something went wrong');
    els.error.replaceChildren();
    const icon = document.createElement('span');
    icon.className = 'alert-icon';
    icon.setAttribute('aria-hidden', 'true');
    icon.textContent = '!';
    const body = document.createElement('div');
    body.className = 'alert-body';
    const t = document.createElement('p');
    t.className = 'alert-title';
    t.textContent = title;
    const m = document.createElement('p');
    m.className = 'alert-message';
    m.textContent = (err && err.message) || String(err);
    body.append(t, m);
    if (err && err.code) {
      const c = document.createElement('code');
      c.className = 'alert-code';
      c.textContent = status ? `${err.code} · HTTP ${status}` : err.code;
      body.append(c);
    }
    const close = document.createElement('button');
    close.type = 'button';
    close.className = 'alert-close';
    close.setAttribute('aria-label', 'Dismiss error');
    close.textContent = '×';
    close.addEventListener('click', clearError);
    els.error.append(icon, body, close);
    els.error.hidden = false;
  }

  function revealError() {
    const r = els.error.getBoundingClientRect();
    if (r.top < 64 || r.bottom > window.innerHeight) {
      els.error.scrollIntoView({ block: 'center', behavior: 'smooth' });
    }
  }

  function clearError() {
    els.error.hidden = true;
    els.error.replaceChildren();
  }

  // ------------------------------------------------------------------ server status

  let pollTimer = null;

  function setStatus(kind, text, title) {
    els.status.dataset.state = kind;
    els.statusText.textContent = text;
    if (title) els.status.title = title; else els.status.removeAttribute('title');
  }

  async function pollReady() {
    clearTimeout(pollTimer);
    let next = 1000;
    try {
      const res = await fetch('readyz', { cache: 'no-store' });
      let body = {};
      try { body = await res.json(); } catch (_) { /* not JSON */ }
      if (res.ok) {
        state.ready = true;
        setStatus('ready', 'Ready');
        await loadModels();
        updateRun();
        return;
      }
      state.ready = false;
      if (body.status === 'failed') {
        setStatus('failed', 'Start-up failed', body.message || '');
        next = 5000;
      } else {
        setStatus('loading', 'Loading models…');
      }
      if (!state.modelsLoaded) loadModels({ quiet: true });
    } catch (_) {
      state.ready = false;
      setStatus('offline', 'Server unreachable');
      next = 3000;
    }
    updateRun();
    pollTimer = setTimeout(pollReady, next);
  }

  // ------------------------------------------------------------------ models

  async function loadModels({ quiet = false } = {}) {
    try {
      const res = await request('v1/models');
      const data = await res.json();
      const device = String(data.device || '').toLowerCase();
      els.deviceName.textContent = device ? device.toUpperCase() : '—';
      els.device.dataset.device = device;
      els.device.title = `Inference device: ${device || 'unknown'}`;
      if (Array.isArray(data.input_format_names) && data.input_format_names.length) {
        showFormats(data.input_format_names, data.input_media_types || []);
      }
      // The server's paint size is what Standard means (0: it paints at full size, as Fine does).
      if (Number.isInteger(data.paint_size)) {
        els.paintDefault.textContent = data.paint_size > 0 ? `${data.paint_size}\u00a0px` : 'full size';
      }
      state.video = data.video && typeof data.video === 'object' ? data.video : null;
      state.videoKnown = true;
      showVideoSupport();
      state.models = Array.isArray(data.models) ? data.models : [];
      if (data.ready || state.models.length) {
        state.modelsLoaded = Boolean(data.ready);
        renderModels(state.models, data.errors || {});
      }
      if (!state.resumed) {
        state.resumed = true;
        resumeJobs();
      }
    } catch (err) {
      if (!quiet) showError(err);
    }
  }

  function selectedModels() {
    return $$('input[name="model"]:checked', els.models).map((i) => i.value);
  }

  function modelByName(name) {
    return state.models.find((m) => m.name === name) || null;
  }

  function modelTooltip(m) {
    const lines = [`${m.name}`, `style: ${m.style || '?'}`, `norm: ${m.norm}`, `steps: ${m.steps}`];
    if (Number.isFinite(m.parameters)) lines.push(`parameters: ${m.parameters.toLocaleString('en-US')}`);
    if (m.for_video) lines.push('for video: trained to keep its strokes steady on a moving camera');
    const losses = m.losses && Object.entries(m.losses);
    if (losses && losses.length) {
      lines.push(`losses: ${losses.map(([k, v]) => `${k} ${Number(v).toPrecision(3)}`).join(', ')}`);
    }
    return lines.join('\n');
  }

  function renderModels(models, errors) {
    const previous = new Set(selectedModels());
    els.models.replaceChildren();
    els.models.removeAttribute('aria-busy');

    if (!models.length) {
      const p = document.createElement('p');
      p.className = 'models-empty';
      p.textContent = 'No models found in the weights folder.';
      els.models.append(p);
    }

    const groups = new Map();
    for (const m of models) {
      const key = m.style || '';
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(m);
    }
    const keys = Array.from(groups.keys()).sort((a, b) => a.localeCompare(b));

    for (const key of keys) {
      const members = groups.get(key).slice().sort((a, b) => a.norm.localeCompare(b.norm) || a.name.localeCompare(b.name));
      const group = document.createElement('div');
      group.className = 'model-group';

      const head = document.createElement('div');
      head.className = 'group-head';
      const title = document.createElement('span');
      title.className = 'group-name';
      title.textContent = prettyStyle(key);
      title.title = key;
      head.append(title);

      const norms = new Set(members.map((m) => m.norm));
      if (norms.size > 1) {
        const ab = document.createElement('button');
        ab.type = 'button';
        ab.className = 'pill-btn ab-btn';
        ab.dataset.style = key;
        ab.textContent = `A/B ${norms.size} norms`;
        ab.title = `Select one model per norm for this style (${Array.from(norms).join(' vs ')})`;
        ab.addEventListener('click', () => selectNormsOf(key));
        head.append(ab);
      }
      group.append(head);

      const list = document.createElement('div');
      list.className = 'model-list';
      for (const m of members) {
        const node = els.modelTemplate.content.firstElementChild.cloneNode(true);
        const input = $('input', node);
        input.value = m.name;
        input.checked = previous.has(m.name);
        input.dataset.norm = m.norm;
        input.dataset.style = m.style || '';
        if (m.for_video) input.dataset.forVideo = 'true';
        $('.video-chip', node).hidden = !m.for_video;
        $('.model-name', node).textContent = m.name;
        const chip = $('.norm-chip', node);
        chip.textContent = m.norm;
        chip.dataset.norm = m.norm;
        const meta = [`${Number(m.steps || 0).toLocaleString('en-US')} steps`];
        if (Number.isFinite(m.parameters)) meta.push(`${formatCount(m.parameters)} params`);
        if (Number.isFinite(m.bytes)) meta.push(formatBytes(m.bytes));
        $('.model-meta', node).textContent = meta.join(' · ');
        node.title = modelTooltip(m);
        node.dataset.testid = `model-${m.name}`;
        list.append(node);
      }
      group.append(list);
      els.models.append(group);
    }

    const failed = Object.entries(errors || {});
    for (const [name, message] of failed) {
      const p = document.createElement('p');
      p.className = 'model-error';
      p.textContent = `${name}: ${message}`;
      els.models.append(p);
    }

    // First visit: preselect the first model so that one click runs something (for a video already
    // chosen, the first model made for video).
    if (!previous.size && models.length) {
      const first = (state.isVideo && $('input[name="model"][data-for-video]', els.models))
        || $('input[name="model"]', els.models);
      if (first) first.checked = true;
    }
    const any = models.length > 0;
    els.selectAll.disabled = !any;
    els.selectNone.disabled = !any;
    updateRun();
  }

  function setSelection(predicate) {
    for (const input of $$('input[name="model"]', els.models)) input.checked = predicate(input);
    updateRun();
  }

  function abArms(models) {
    // A style can hold models trained with different recipes (the shipped Starry Night has an unclipped
    // flagship beside a clipped A/B set, weights/zoo.toml); comparing norms across recipes would not be
    // fair. The server says which models differ only in the norm (ab_group, from
    // style_transfer.spec.ab_group, issue 15). So: the models of the A/B set that covers the most norms
    // (then the most steps), one per norm (the longest-trained). If no set has two norms, one model per
    // norm over the whole style.
    const bySet = new Map();
    for (const m of models) {
      if (!bySet.has(m.ab_group)) bySet.set(m.ab_group, []);
      bySet.get(m.ab_group).push(m);
    }
    const normCount = (arms) => new Set(arms.map((m) => m.norm)).size;
    const steps = (arms) => Math.max(0, ...arms.map((m) => m.steps || 0));
    let chosen = [];
    for (const arms of bySet.values()) {
      const n = normCount(arms);
      const c = normCount(chosen);
      if (n > c || (n === c && steps(arms) > steps(chosen))) chosen = arms;
    }
    if (normCount(chosen) < 2) chosen = models;
    const best = new Map();
    for (const m of chosen) {
      const cur = best.get(m.norm);
      if (!cur || (m.steps || 0) > (cur.steps || 0)) best.set(m.norm, m);
    }
    return Array.from(best.values());
  }

  function selectNormsOf(style) {
    state.selectionTouched = true;
    const names = new Set(abArms(state.models.filter((x) => (x.style || '') === style)).map((m) => m.name));
    setSelection((input) => names.has(input.value));
  }

  // ------------------------------------------------------------------ styles of a multi-style model

  // A multi-style model (conditional instance norm, issue 17) lists several `styles` in v1/models; an
  // ordinary model one (none from an older server). The panel is hidden unless one is selected, and the
  // page then sends exactly what it sent before.
  function isMultiStyle(m) {
    return Boolean(m) && Array.isArray(m.styles) && m.styles.length > 1;
  }

  function styledModel() {
    // The first selected multi-style model. In a comparison the server applies the style or mix to
    // every multi-style model, and runs the ordinary ones beside it in their one style.
    return selectedModels().map(modelByName).find(isMultiStyle) || null;
  }

  function fillStyles(select, styles, chosen) {
    select.replaceChildren(...styles.map((name) => {
      const option = document.createElement('option');
      option.value = name;
      option.textContent = prettyStyle(name);
      return option;
    }));
    select.value = chosen;
  }

  function updateStylePanel() {
    const model = styledModel();
    els.styleMix.hidden = !model;
    if (!model) {
      state.styleModel = null;
      return;
    }
    if (state.styleModel === model.name) return;
    state.styleModel = model.name;
    els.styleModel.textContent = model.name;
    fillStyles(els.styleA, model.styles, model.styles[0]);  // the model's default style
    fillStyles(els.styleB, model.styles, model.styles[1]);
    els.blend.value = '0';
    showBlend();
  }

  // The request fields: style A alone, style B alone, or their mix (the blend is the weight of B).
  function readStyle() {
    if (els.styleMix.hidden) return {};
    const a = els.styleA.value;
    const b = els.styleB.value;
    const w = Math.min(1, Math.max(0, Number(els.blend.value)));
    if (w <= 0 || a === b) return { style: a };
    if (w >= 1) return { style: b };
    return { mix: `${a}=${(1 - w).toFixed(2)},${b}=${w.toFixed(2)}` };
  }

  function showBlend() {
    const w = Number(els.blend.value);
    const a = prettyStyle(els.styleA.value);
    const b = prettyStyle(els.styleB.value);
    els.blendValue.textContent = w.toFixed(2);
    els.blend.style.setProperty('--fill', `${w * 100}%`);
    els.blend.setAttribute('aria-valuetext', `${Math.round((1 - w) * 100)}% ${a}, ${Math.round(w * 100)}% ${b}`);
    els.blendA.textContent = a;
    els.blendB.textContent = b;
  }

  let restyleTimer = null;

  function restyleSoon(delay) {
    clearTimeout(restyleTimer);
    restyleTimer = setTimeout(stylizeAgain, delay);
  }

  // Stylize again with the current style fields: at once when idle, else right after the running request.
  function stylizeAgain() {
    if (state.isVideo) return;  // a video job is long: it runs only when asked to
    if (!state.ready || !state.file || !selectedModels().length) return;
    if (JSON.stringify(readStyle()) === state.shownStyle) return;
    if (state.running) {
      state.rerun = true;
      return;
    }
    run({ restyle: true });
  }

  els.blend.addEventListener('input', () => {
    showBlend();
    restyleSoon(200);  // while dragging: once it rests
  });
  for (const select of [els.styleA, els.styleB]) {
    select.addEventListener('change', () => {
      showBlend();
      restyleSoon(0);
    });
  }

  // ------------------------------------------------------------------ photo

  // The server names the formats it reads as people know them, and their media types (GET /v1/models).
  function showFormats(names, mediaTypes) {
    formatNames = orList(names);
    els.formatNames.textContent = formatNames;
    imageAccept = mediaTypes.join(',');
    applyAccept();
  }

  function videoOn() {
    return Boolean(state.video && state.video.enabled);
  }

  // The file picker offers the server's image types, and its video types and suffixes when it stylizes
  // videos (a .mov often has no media type the browser knows).
  function applyAccept() {
    const v = state.video;
    const video = videoOn() ? [...(v.media_types || []), ...(v.suffixes || [])] : [];
    els.fileInput.accept = [imageAccept, ...video].filter(Boolean).join(',');
  }

  // "Photo" or "Photo or video", and the video formats and limits under the drop zone.
  function showVideoSupport() {
    const on = videoOn();
    els.photoWord.textContent = on ? 'Photo or video' : 'Photo';
    els.dropWhat.textContent = on ? 'photo or video' : 'photo';
    els.videoFormats.hidden = !on;
    if (on) {
      const v = state.video;
      const names = (v.suffixes || []).map((x) => String(x).replace(/^\./, '').toUpperCase());
      const limits = [];
      if (v.max_bytes > 0) limits.push(formatBytes(v.max_bytes));
      if (v.max_frames > 0) limits.push(`${v.max_frames.toLocaleString('en-US')} frames`);
      els.videoFormats.textContent = [names.length ? `${orList(names)} video` : 'Video',
        limits.length ? `up to ${limits.join(' and ')}` : ''].filter(Boolean).join(', ');
    }
    applyAccept();
    updateRun();
  }

  function looksLikeVideo(file) {
    if ((file.type || '').startsWith('video/')) return true;
    const name = (file.name || '').toLowerCase();
    const suffixes = (state.video && state.video.suffixes) || [];
    return suffixes.some((x) => name.endsWith(String(x).toLowerCase()));
  }

  function setFile(file) {
    if (!file) return;
    if (looksLikeVideo(file)) {
      setVideo(file);
      return;
    }
    if (file.type && !file.type.startsWith('image/')) {
      const what = videoOn() ? `a ${formatNames} photo or a video` : `a ${formatNames} photo`;
      showError({ title: 'Not an image', message: `“${file.name}” is not an image. Use ${what}.` });
      return;
    }
    clearError();
    dropVideoResults();
    hideVideoPreview();
    state.file = file;
    state.fileShown = null;
    if (state.previewURL) URL.revokeObjectURL(state.previewURL);
    state.previewURL = URL.createObjectURL(file);
    els.preview.hidden = false;
    els.preview.src = state.previewURL;
    els.preview.alt = `Original: ${file.name || 'pasted image'}`;
    showChosen(file);
  }

  // A video: refused here when the server does not stylize videos or the file is over its size limit
  // (saves uploading it); else previewed, muted, and the run becomes a video job.
  function setVideo(file) {
    const v = state.video;
    if (!videoOn()) {
      let why = 'this server does not stylize videos';
      if (v && v.reason) why = `this server does not stylize videos: ${v.reason}`;
      else if (!state.videoKnown) why = 'the server has not said yet whether it stylizes videos; try again in a moment';
      showError({ title: 'Videos not available', code: 'video_unsupported',
        message: sentence(`“${file.name}” is a video, and ${why}`) });
      revealError();
      return;
    }
    if (v.max_bytes > 0 && file.size > v.max_bytes) {
      showError({ title: 'Video too large', code: 'payload_too_large',
        message: `“${file.name}” is ${formatBytes(file.size)}; this server takes videos up to `
          + `${formatBytes(v.max_bytes)}. Trim or compress it first.` });
      revealError();
      return;
    }
    clearError();
    dropVideoResults();
    state.file = file;
    state.fileShown = null;
    state.isVideo = true;
    if (state.previewURL) URL.revokeObjectURL(state.previewURL);
    state.previewURL = URL.createObjectURL(file);
    els.preview.removeAttribute('src');
    els.preview.hidden = true;
    els.videoPreview.hidden = false;
    els.videoPreview.src = state.previewURL;
    els.videoPreview.setAttribute('aria-label', `Original video: ${file.name || 'video'}`);
    preferVideoModel();
    showChosen(file);
  }

  function showChosen(file) {
    els.dzEmpty.hidden = true;
    els.dzPreview.hidden = false;
    els.dropzone.classList.add('has-file');
    els.clearFile.hidden = false;
    els.fileMeta.hidden = false;
    els.fileMeta.textContent = `${file.name || 'pasted image'} · ${formatBytes(file.size)}`;
    updateRun();
  }

  function hideVideoPreview() {
    state.isVideo = false;
    const video = els.videoPreview;
    video.pause();
    if (video.getAttribute('src')) {
      video.removeAttribute('src');
      video.load();  // lets go of the file
    }
    video.hidden = true;
  }

  // With a video, and the models still as the page chose them (or none), select a model trained for
  // video: its strokes follow a moving camera.
  function preferVideoModel() {
    const made = $('input[name="model"][data-for-video]', els.models);
    if (!made || (state.selectionTouched && selectedModels().length)) return;
    if ($$('input[name="model"]:checked', els.models).some((i) => i.dataset.forVideo)) return;
    setSelection((input) => input === made);
  }

  function showMeta(dims) {
    els.fileMeta.replaceChildren();
    const name = document.createElement('span');
    name.className = 'file-name';
    name.textContent = state.file.name || 'pasted image';
    const info = document.createElement('span');
    info.className = 'mono';
    info.textContent = `${dims} · ${formatBytes(state.file.size)}`;
    els.fileMeta.append(name, info);
  }

  els.preview.addEventListener('load', () => {
    if (!state.file || state.isVideo) return;
    if (state.fileShown === null) state.fileShown = true;
    const { naturalWidth: w, naturalHeight: h } = els.preview;
    showMeta(`${w}×${h}`);
  });

  els.preview.addEventListener('error', () => {
    if (!state.file || state.isVideo) return;
    state.fileShown = false;
    els.fileMeta.textContent = `${state.file.name} · ${formatBytes(state.file.size)} · this browser cannot show it; `
      + 'the server may still read it (shown here after the first run)';
  });

  els.videoPreview.addEventListener('loadedmetadata', () => {
    if (!state.file || !state.isVideo) return;
    const v = els.videoPreview;
    showMeta(`${v.videoWidth}×${v.videoHeight} · ${formatClock(v.duration)}`);
  });

  els.videoPreview.addEventListener('error', () => {
    if (!state.file || !state.isVideo || !els.videoPreview.getAttribute('src')) return;
    els.fileMeta.textContent = `${state.file.name} · ${formatBytes(state.file.size)} · this browser cannot play it; `
      + 'the server may still read it';
  });

  // The preview plays (muted) while the pointer rests on it.
  els.dropzone.addEventListener('mouseenter', () => {
    if (state.isVideo) els.videoPreview.play().catch(() => { /* not playable here */ });
  });
  els.dropzone.addEventListener('mouseleave', () => els.videoPreview.pause());

  function clearFile() {
    state.file = null;
    state.fileShown = null;
    hideVideoPreview();
    if (state.previewURL) URL.revokeObjectURL(state.previewURL);
    state.previewURL = null;
    els.preview.removeAttribute('src');
    els.preview.hidden = false;
    els.dzEmpty.hidden = false;
    els.dzPreview.hidden = true;
    els.dropzone.classList.remove('has-file');
    els.clearFile.hidden = true;
    els.fileMeta.hidden = true;
    els.fileMeta.textContent = '';
    els.fileInput.value = '';
    updateRun();
  }

  els.fileInput.addEventListener('change', () => {
    const file = els.fileInput.files && els.fileInput.files[0];
    if (file) setFile(file);
  });
  els.clearFile.addEventListener('click', clearFile);

  // Drag and drop anywhere on the page; the drop zone lights up.
  const hasFiles = (e) => Boolean(e.dataTransfer) && Array.from(e.dataTransfer.types || []).includes('Files');
  let dragDepth = 0;
  window.addEventListener('dragenter', (e) => {
    if (!hasFiles(e)) return;
    dragDepth += 1;
    document.body.classList.add('dragging');
  });
  window.addEventListener('dragleave', (e) => {
    if (!hasFiles(e)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) document.body.classList.remove('dragging');
  });
  window.addEventListener('dragover', (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = 'copy';
  });
  window.addEventListener('drop', (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    document.body.classList.remove('dragging');
    const file = e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) setFile(file);
  });

  // Paste an image (or a video file) from the clipboard.
  document.addEventListener('paste', (e) => {
    const items = Array.from((e.clipboardData && e.clipboardData.items) || []);
    const item = items.find((i) => i.kind === 'file' && /^(image|video)\//.test(i.type));
    if (!item) return;
    const file = item.getAsFile();
    if (file) {
      e.preventDefault();
      setFile(file);
    }
  });

  // ------------------------------------------------------------------ options

  function showStrength() {
    els.strengthValue.textContent = Number(els.strength.value).toFixed(2);
    els.strength.style.setProperty('--fill', `${Number(els.strength.value) * 100}%`);
  }
  els.strength.addEventListener('input', showStrength);

  els.resetOptions.addEventListener('click', () => {
    els.strength.value = '1';
    els.preserve.checked = false;
    els.maxSize.value = '';
    $('input[name="format"][value="png"]').checked = true;
    $('input[name="paint_size"][value=""]').checked = true;
    showStrength();
    state.styleModel = null;  // back to the model's first two styles, blend 0
    updateStylePanel();
  });

  function readOptions() {
    const opts = {
      strength: String(Math.min(1, Math.max(0, Number(els.strength.value)))),
      preserve_color: els.preserve.checked ? 'true' : 'false',
      format: ($('input[name="format"]:checked') || { value: 'png' }).value,
    };
    // Standard sends nothing: the server's paint size (GET /v1/models, paint_size).
    const paint = ($('input[name="paint_size"]:checked') || { value: '' }).value;
    if (paint) opts.paint_size = paint;
    const raw = els.maxSize.value.trim();
    if (raw) {
      const n = Number(raw);
      if (!Number.isInteger(n) || n < 8) {
        throw Object.assign(new Error('Max size must be a whole number of pixels, at least 8 (or empty for the original size).'),
          { title: 'Invalid max size', code: 'invalid_max_size' });
      }
      opts.max_size = String(n);
    }
    return opts;
  }

  // ------------------------------------------------------------------ run

  function updateRun() {
    updateStylePanel();
    updateLinkSliders();
    const n = selectedModels().length;
    // A video comes back as MP4 whatever the format; the choice stays for photos.
    const video = state.isVideo && Boolean(state.file);
    for (const radio of $$('input[name="format"]', els.form)) radio.disabled = video;
    els.formatVideo.hidden = !video;
    if (video || state.runKind === 'video') {
      updateVideoRun(n);
      return;
    }
    if (state.running) {
      els.runLabel.textContent = n > 1 ? 'Comparing…' : 'Stylizing…';
    } else {
      els.runLabel.textContent = n > 1 ? `Compare ${n} models` : 'Stylize';
    }
    els.run.disabled = state.running || !state.ready || !state.file || n === 0;
    els.run.classList.toggle('is-running', state.running);
    els.run.setAttribute('aria-busy', state.running ? 'true' : 'false');
    let hint;
    if (state.running) hint = 'Working on it…';
    else if (!state.ready) hint = 'Waiting for the server to load its models…';
    else if (!state.file) hint = 'Choose a photo to start.';
    else if (n === 0) hint = 'Select at least one model.';
    else if (n > 1) hint = `${n} models on the same photo, side by side.`;
    else hint = 'Tip: select several models to compare them.';
    els.runHint.textContent = hint;
  }

  // A video runs ONE model, the first selected: the A/B of several models is for photos.
  function updateVideoRun(n) {
    const name = selectedModels()[0];
    els.runLabel.textContent = state.running ? 'Stylizing video…' : 'Stylize video';
    els.run.disabled = state.running || !state.ready || !state.file || n === 0;
    els.run.classList.toggle('is-running', state.running);
    els.run.setAttribute('aria-busy', state.running ? 'true' : 'false');
    let hint;
    if (state.running) hint = 'Working on it: the server stylizes the video frame by frame.';
    else if (!state.ready) hint = 'Waiting for the server to load its models…';
    else if (!state.file) hint = 'Choose a photo or a video to start.';
    else if (n === 0) hint = 'Select a model.';
    else if (n > 1) hint = `A video runs one model: ${name}, the first selected. Compare models on a photo.`;
    else if ((modelByName(name) || {}).for_video) hint = `${name} keeps its strokes steady when the camera moves.`;
    else if ($('input[name="model"][data-for-video]', els.models)) {
      hint = 'Tip: a model marked “for video” keeps its strokes steady when the camera moves.';
    } else hint = 'The server stylizes the video frame by frame and keeps its sound.';
    els.runHint.textContent = hint;
  }

  els.models.addEventListener('change', (e) => {
    if (!e.target.matches('input[name="model"]')) return;
    state.selectionTouched = true;
    updateRun();
  });
  els.selectAll.addEventListener('click', () => {
    state.selectionTouched = true;
    setSelection(() => true);
  });
  els.selectNone.addEventListener('click', () => {
    state.selectionTouched = true;
    setSelection(() => false);
  });

  let progressTimer = null;

  function startProgress(names) {
    const t0 = performance.now();
    setBar(null);
    els.progressLabel.textContent = names.length > 1
      ? `Comparing ${names.length} models…`
      : `Stylizing with ${names[0]}…`;
    els.progressTime.textContent = '0.0 s';
    els.progress.hidden = false;
    clearInterval(progressTimer);
    progressTimer = setInterval(() => {
      els.progressTime.textContent = `${((performance.now() - t0) / 1000).toFixed(1)} s`;
    }, 100);
  }

  function revealProgress() {
    // On narrow screens the results sit below the controls: bring the progress bar into view.
    const r = els.progress.getBoundingClientRect();
    if (r.top > window.innerHeight - 40 || r.bottom < 64) {
      els.progress.scrollIntoView({ block: 'start', behavior: 'smooth' });
    }
  }

  function stopProgress() {
    clearInterval(progressTimer);
    els.progress.hidden = true;
    setBar(null);
    els.progressLive.textContent = '';
  }

  // The bar: a share done in [0, 1], or null for the sliding bar of an unknown duration.
  function setBar(fraction) {
    const known = Number.isFinite(fraction);
    els.progress.classList.toggle('is-determinate', known);
    els.progressBar.setAttribute('role', 'progressbar');
    els.progressBar.setAttribute('aria-valuemin', '0');
    els.progressBar.setAttribute('aria-valuemax', '100');
    if (known) {
      const pct = Math.min(100, Math.max(0, fraction * 100));
      els.progressFill.style.width = `${pct}%`;
      els.progressBar.setAttribute('aria-valuenow', String(Math.round(pct)));
    } else {
      els.progressFill.style.width = '';
      els.progressBar.removeAttribute('aria-valuenow');
    }
  }

  function showSkeletons(names) {
    const saved = document.createDocumentFragment();
    saved.append(...Array.from(els.results.childNodes));
    state.savedResults = saved;
    els.emptyState.hidden = true;
    for (const name of names) {
      const sk = document.createElement('div');
      sk.className = 'card result-skeleton';
      sk.setAttribute('aria-hidden', 'true');
      const label = document.createElement('span');
      label.className = 'skeleton-label';
      label.textContent = name;
      const box = document.createElement('div');
      box.className = 'skeleton-box';
      sk.append(label, box);
      els.results.append(sk);
    }
    return saved;
  }

  async function run({ restyle = false } = {}) {
    if (els.run.disabled) return;
    if (state.isVideo) {
      runVideo();
      return;
    }
    const names = selectedModels();
    clearError();
    const opts = optionsOrSay();
    if (!opts) return;
    const styleFields = readStyle();
    const form = new FormData();
    form.append('file', state.file, state.file.name || 'photo.png');
    for (const [k, v] of Object.entries({ ...opts, ...styleFields })) form.append(k, v);

    state.running = true;
    state.runKind = 'image';
    const controller = new AbortController();
    state.abort = controller;
    updateRun();
    startProgress(names);
    // From the blend slider: keep the results in place (dimmed) rather than skeletons, and stay put.
    const saved = restyle ? null : showSkeletons(names);
    els.results.classList.toggle('is-updating', restyle);
    if (!restyle) revealProgress();
    const t0 = performance.now();
    const file = state.file;
    const newURLs = [];
    try {
      let items;
      if (names.length === 1 && state.fileShown !== false) {
        form.append('model', names[0]);
        const res = await request('v1/stylize', { method: 'POST', body: form, signal: controller.signal });
        const blob = await res.blob();
        const url = URL.createObjectURL(blob);
        const original = URL.createObjectURL(file);
        newURLs.push(url, original);
        const info = modelByName(names[0]) || {};
        const size = /^(\d+)x(\d+)$/.exec(res.headers.get('X-Image-Size') || '');
        items = [{
          model: res.headers.get('X-Model') || names[0],
          norm: info.norm || '',
          // A multi-style model ran the style or mix sent (as /v1/compare reports it).
          style: isMultiStyle(info) ? (styleFields.style || styleFields.mix) : (info.style || ''),
          elapsedMs: parseFloat(res.headers.get('X-Elapsed-Ms')),
          image: url,
          original,
          width: size ? Number(size[1]) : null,
          height: size ? Number(size[2]) : null,
          mime: blob.type || res.headers.get('Content-Type') || 'image/png',
        }];
      } else {
        form.append('models', names.join(','));
        form.append('output', 'json');
        const res = await request('v1/compare', { method: 'POST', body: form, signal: controller.signal });
        const data = await res.json();
        // A photo this browser cannot show: the preview shows the server's reading of it instead.
        if (state.fileShown === false && file === state.file && data.original) els.preview.src = data.original;
        items = (data.results || []).map((r) => ({
          model: r.model,
          norm: r.norm,
          style: r.style,
          elapsedMs: Number(r.elapsed_ms),
          ssim: Number(r.ssim),
          darkSpots: Number(r.dark_spots),
          image: r.image,
          original: data.original,
          width: data.width,
          height: data.height,
          mime: mimeOfDataURL(r.image),
        }));
      }
      for (const u of state.resultURLs) URL.revokeObjectURL(u);
      state.resultURLs = newURLs;
      state.shownStyle = JSON.stringify(styleFields);
      renderResults(items, { roundTripMs: performance.now() - t0, fileName: file.name, restyle });
      tidyJobs();  // a video shown before is replaced: its files go
    } catch (err) {
      for (const u of newURLs) URL.revokeObjectURL(u);
      if (saved) els.results.replaceChildren(saved);
      els.emptyState.hidden = Boolean($('.result', els.results));
      if (err && err.name === 'AbortError') {
        showError({ title: 'Cancelled', message: 'The request was cancelled; the server may still finish it.' });
      } else {
        showError(err);
        revealError();
        if (err && (err.status === 0 || err.status === 503)) pollReady();
      }
    } finally {
      state.running = false;
      state.runKind = null;
      state.abort = null;
      state.savedResults = null;
      els.results.classList.remove('is-updating');
      stopProgress();
      updateRun();
      if (state.rerun) {
        state.rerun = false;
        stylizeAgain();
      }
    }
  }

  els.form.addEventListener('submit', (e) => {
    e.preventDefault();
    run();
  });
  els.cancel.addEventListener('click', () => {
    if (state.job) cancelVideo();
    else if (state.abort) state.abort.abort();
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      run();
    }
  });

  // ------------------------------------------------------------------ video jobs

  const POLL_MS = 1000;
  const TERMINAL = new Set(['done', 'failed', 'cancelled']);
  // Video refusals read better with their own titles than with the image ones of ERROR_TITLES.
  const VIDEO_TITLES = {
    payload_too_large: 'Video too large',
    video_too_long: 'Video too long',
    unsupported_media_type: 'Not a video the server reads',
    video_unsupported: 'Videos not supported',
    unknown_video: 'Video job gone',
    busy: 'Server busy',
  };
  const VIDEO_STATUS_TITLES = { 413: 'Video too large', 415: 'Not a video the server reads' };

  // `audio` of a job: "none", "copied" or how it was re-encoded (null before the job is done).
  function soundOf(audio) {
    if (!audio) return '';
    if (audio === 'none') return 'no sound';
    return audio === 'copied' ? 'sound kept' : `sound ${audio}`;
  }

  function jobURL(id) {
    return `v1/videos/${encodeURIComponent(id)}`;
  }

  // Deletes a job's files on the server; a failure only leaves them to expire there. Either way the
  // page forgets the job.
  function deleteJob(id) {
    forgetJob(id);
    return fetch(jobURL(id), { method: 'DELETE' }).then((res) => res.ok || res.status === 404, () => false);
  }

  // The video jobs shown or waited for, remembered in localStorage so that a reload or a closed tab loses
  // none: [{id, model, name}] (name: the uploaded file's), oldest first, a few at most. localStorage is
  // the origin's; the key names the page's path too, for servers behind different path prefixes.
  const JOBS_KEY = `style-transfer.video-jobs:${new URL('.', window.location.href).pathname}`;
  const JOBS_KEPT = 8;

  function rememberedJobs() {
    try {
      const list = JSON.parse(window.localStorage.getItem(JOBS_KEY) || '[]');
      return Array.isArray(list) ? list.filter((e) => e && typeof e.id === 'string' && e.id) : [];
    } catch (_) {
      return [];  // storage off (private mode, a policy) or not JSON: nothing remembered
    }
  }

  function storeJobs(list) {
    try {
      if (list.length) window.localStorage.setItem(JOBS_KEY, JSON.stringify(list.slice(-JOBS_KEPT)));
      else window.localStorage.removeItem(JOBS_KEY);
    } catch (_) { /* storage off or full: the page only forgets across reloads */ }
  }

  function rememberJob(id, { model, name }) {
    storeJobs([...rememberedJobs().filter((e) => e.id !== id), { id, model: model || '', name: name || '' }]);
  }

  function forgetJob(id) {
    const list = rememberedJobs();
    if (list.some((e) => e.id === id)) storeJobs(list.filter((e) => e.id !== id));
  }

  // On load (once GET v1/models answered): each remembered job is asked for. A finished one shows its
  // card again, a queued or running one (the newest, when other tabs left several) is followed as if its
  // run had never stopped, a failed one says why once; one the server no longer knows (expired, deleted,
  // a restarted server) is forgotten without a word. One the server could not answer for stays for the
  // next load.
  async function resumeJobs() {
    const entries = rememberedJobs();
    if (!entries.length) return;
    const found = await Promise.all(entries.map(async (entry) => {
      try {
        const res = await request(jobURL(entry.id));
        return { entry, status: await res.json() };
      } catch (err) {
        if (err && err.status === 404) forgetJob(entry.id);
        return null;
      }
    }));
    const done = [];
    let active = null;
    let failed = null;
    for (const item of found) {
      if (!item) continue;
      const phase = item.status && item.status.status;
      if (phase === 'done') done.push(item);
      else if (phase === 'queued' || phase === 'running') active = item;  // the newest wins
      else {
        if (phase === 'failed') failed = item;
        deleteJob(item.entry.id);  // a failed or cancelled job: its files go, as after a run
      }
    }
    if (failed) {
      const e = failed.status.error || {};
      const what = failed.entry.name ? `“${failed.entry.name}”` : 'The video';
      showError(Object.assign(new ApiError(
        sentence(`${what} could not be stylized with ${failed.status.model || failed.entry.model || 'its model'}: `
          + `${e.message || 'the server gave no reason'}`), e.code || 'failed', null), { title: 'Video failed' }));
    }
    if (state.running) return;  // the user started something meanwhile: the rest waits for the next load
    if (done.length && !$('.result', els.results)) {
      done.forEach(({ entry, status }, i) => renderVideoResult(status, {
        file: { name: entry.name }, model: entry.model, styleFields: {} }, { append: i > 0 }));
    }
    if (active) resumeVideo(active.entry, active.status);
    updateRun();
  }

  function newJob({ file, model, styleFields }) {
    return { id: null, controller: new AbortController(), cancelled: false, cancelling: null, note: '',
      file, model, styleFields, phase: 'upload', quarter: -1, elapsed: 0, eta: null, seenAt: performance.now() };
  }

  // The options as readOptions gives them, or null after showing why they are not valid (the max size).
  function optionsOrSay() {
    try {
      return readOptions();
    } catch (err) {
      showError(err);
      revealError();
      els.maxSize.focus();
      return null;
    }
  }

  async function runVideo() {
    const names = selectedModels();
    const model = names[0];
    clearError();
    const opts = optionsOrSay();
    if (!opts) return;
    delete opts.format;  // a video comes back as MP4
    const styleFields = readStyle();
    const file = state.file;
    const form = new FormData();
    form.append('file', file, file.name || 'video.mp4');
    form.append('model', model);
    for (const [k, v] of Object.entries({ ...opts, ...styleFields })) form.append(k, v);

    const job = newJob({ file, model, styleFields });
    await followJob(job, async (signal) => {
      const created = await upload('v1/videos', form, { signal, onProgress: (f) => showUpload(job, f) });
      const status = JSON.parse(created.responseText);
      job.id = status.id;
      rememberJob(job.id, { model, name: file.name });
      return status;
    });
  }

  // A remembered job still queued or running after a reload: followed from its last status.
  function resumeVideo(entry, status) {
    const job = newJob({ file: { name: entry.name }, model: status.model || entry.model, styleFields: {} });
    job.id = entry.id;
    job.phase = 'resumed';
    followJob(job, async () => status);
  }

  // Shows a video job's progress until it ends: `start` sends it (or has its status already) and resolves
  // with its first status. The results shown before are set aside meanwhile, and replaced (their jobs
  // deleted) by the stylized video, or put back if the job fails or is cancelled.
  async function followJob(job, start) {
    state.running = true;
    state.runKind = 'video';
    state.job = job;
    state.abort = job.controller;
    updateRun();
    startVideoProgress(job);
    const saved = showSkeletons([job.model]);
    revealProgress();
    let shown = false;
    try {
      const signal = job.controller.signal;
      let status = await start(signal);
      showJob(job, status);
      while (!TERMINAL.has(status.status)) {
        await sleep(POLL_MS, signal);
        status = await pollJob(job);
        showJob(job, status);
      }
      if (status.status === 'failed') {
        const e = status.error || {};
        throw Object.assign(new ApiError(e.message || 'The server could not stylize the video.', e.code || 'failed', null),
          { title: 'Video failed' });
      }
      if (status.status === 'cancelled') {
        throw Object.assign(new ApiError('The video job was cancelled on the server.', 'cancelled', null),
          { title: 'Cancelled' });
      }
      renderVideoResult(status, job);
      shown = true;
      tidyJobs();  // what was shown before, video or photos, is replaced
    } catch (err) {
      // Aborted, not by Cancel: the page is being left or reloaded. The job runs on and stays remembered.
      const leaving = err && err.name === 'AbortError' && !job.cancelled;
      if (!shown) {
        els.results.replaceChildren(saved);
        els.emptyState.hidden = Boolean($('.result', els.results));
        if (job.id && !job.cancelled && !leaving) deleteJob(job.id);  // a failed job's files
      }
      if (job.cancelled || (err && err.name === 'AbortError')) {
        await job.cancelling;
        showError({ title: 'Cancelled', message: job.note || 'The video job was cancelled.' });
      } else {
        if (err && !err.title) {
          err.title = VIDEO_TITLES[err.code] || VIDEO_STATUS_TITLES[err.status] || undefined;
        }
        if (err && err.code === 'busy' && Number.isFinite(err.retryAfter) && !/again/i.test(err.message)) {
          err.message = `${sentence(err.message)} Try again in ${formatAbout(err.retryAfter)}.`;
        }
        showError(err);
        revealError();
        if (err && err.status === 0) pollReady();
      }
    } finally {
      state.running = false;
      state.runKind = null;
      state.job = null;
      state.abort = null;
      state.savedResults = null;
      stopProgress();
      updateRun();
    }
  }

  // One status; a dropped connection or a 5xx is retried a few times (the job runs on regardless).
  async function pollJob(job) {
    for (let failures = 1; ; failures += 1) {
      try {
        const res = await request(jobURL(job.id), { signal: job.controller.signal });
        return await res.json();
      } catch (err) {
        const transient = err && (err.status === 0 || err.status >= 500);
        if (!transient || failures >= 10) throw err;
        await sleep(Math.min(5000, POLL_MS * failures), job.controller.signal);
      }
    }
  }

  // Cancel: DELETE the job (queued or running: the server stops it and deletes its files).
  function cancelVideo() {
    const job = state.job;
    if (!job || job.cancelled) return;
    job.cancelled = true;
    els.progressLabel.textContent = 'Cancelling…';
    job.cancelling = (async () => {
      if (!job.id) {
        job.note = 'The upload was cancelled.';
        return;
      }
      job.note = await deleteJob(job.id)
        ? 'The video job was cancelled and its files deleted.'
        : 'The page stopped waiting, but the server could not be told to cancel the job; it deletes it when it expires.';
    })();
    job.controller.abort();
  }

  function startVideoProgress(job) {
    clearInterval(progressTimer);
    els.progressTime.textContent = '';
    els.progress.hidden = false;
    if (job.phase === 'upload') {
      setBar(0);
      els.progressLabel.textContent = `Uploading ${job.file.name || 'the video'}…`;
      announce(`Uploading the video for ${job.model}.`);
    } else {
      setBar(null);  // a job followed again after a reload: its status comes next
      els.progressLabel.textContent = `${job.file.name || 'A video'} with ${job.model}…`;
    }
    // Elapsed time and ETA tick between two polls, from the server's last figures.
    progressTimer = setInterval(() => showTimes(job), 250);
  }

  function showUpload(job, fraction) {
    if (job.phase !== 'upload' || job.cancelled) return;
    setBar(fraction);
    els.progressLabel.textContent = `Uploading ${job.file.name || 'the video'} · ${Math.floor(fraction * 100)}%`;
  }

  function showTimes(job) {
    if (job.phase === 'upload' || job.cancelled) return;
    const since = (performance.now() - job.seenAt) / 1000;
    const running = !TERMINAL.has(job.phase);
    const parts = [`${formatClock(job.elapsed + (running ? since : 0))} elapsed`];
    if (job.phase === 'running' && Number.isFinite(job.eta)) {
      parts.push(`about ${formatClock(Math.max(0, job.eta - since))} left`);
    }
    els.progressTime.textContent = parts.join(' · ');
  }

  function announce(text) {
    els.progressLive.textContent = text;
  }

  function showJob(job, s) {
    if (job.cancelled) return;
    const phase = s.status;
    job.elapsed = Number.isFinite(s.elapsed_s) ? s.elapsed_s : job.elapsed;
    job.eta = Number.isFinite(s.eta_s) ? s.eta_s : null;
    job.seenAt = performance.now();
    const done = Number(s.frames_done) || 0;
    const total = Number.isFinite(s.frames_total) && s.frames_total > 0 ? Math.max(s.frames_total, done) : null;
    let fraction = Number.isFinite(s.progress) ? s.progress : (total ? done / total : null);
    let label;
    if (phase === 'queued') {
      fraction = null;
      // queue_position: the jobs ahead of this one (0: it runs next).
      const ahead = s.queue_position;
      if (!Number.isFinite(ahead)) label = 'Queued…';
      else if (ahead <= 0) label = 'Queued: next in line';
      else label = `Queued: ${ahead} ${ahead === 1 ? 'video' : 'videos'} ahead`;
    } else if (phase === 'running') {
      label = `${total ? `${done} / ${total}` : done} frames`;
      if (Number.isFinite(fraction)) label += ` · ${Math.floor(fraction * 100)}%`;
    } else if (phase === 'done') {
      fraction = 1;
      label = `Done: ${done} frames`;
    } else {
      label = phase === 'failed' ? 'Failed' : 'Cancelled';
    }
    setBar(fraction);
    els.progressLabel.textContent = label;
    showTimes({ ...job, phase });
    // Screen readers hear the milestones, not every second.
    const quarter = phase === 'running' && Number.isFinite(fraction) ? Math.floor(fraction * 4) : -1;
    if (phase !== job.phase) {
      announce(phase === 'running' ? 'Stylizing the video.' : `${label}.`);
    } else if (quarter > job.quarter && quarter > 0 && quarter < 4) {
      announce(`${quarter * 25}% of the video stylized.`);
    }
    job.quarter = Math.max(job.quarter, quarter);
    job.phase = phase;
  }

  // ------------------------------------------------------------------ results

  function renderResults(items, { roundTripMs, fileName, restyle = false }) {
    els.results.replaceChildren();
    els.results.classList.toggle('is-restyled', restyle);
    const times = items.map((i) => i.elapsedMs).filter(Number.isFinite);
    const fastest = items.length > 1 && times.length ? Math.min(...times) : null;
    const stem = fileStem(fileName);

    for (const item of items) {
      const card = els.resultTemplate.content.firstElementChild.cloneNode(true);
      card.dataset.model = item.model;
      card.dataset.testid = `result-${item.model}`;
      $('.result-name', card).textContent = item.model;
      const norm = $('.norm-chip', card);
      norm.textContent = item.norm || 'norm ?';
      norm.dataset.norm = item.norm || '';
      const style = $('.style-chip', card);
      style.textContent = styleLabel(item.style);
      style.title = item.style || '';
      card.dataset.style = item.style || '';

      const elapsed = $('.elapsed', card);
      elapsed.textContent = formatMs(item.elapsedMs);
      if (fastest !== null && item.elapsedMs === fastest) {
        elapsed.classList.add('is-fastest');
        elapsed.title = 'Fastest of this comparison (inference time on the server)';
      }

      const compare = $('.compare', card);
      const original = $('img.original', card);
      const stylized = $('img.stylized', card);
      if (item.width && item.height) compare.style.aspectRatio = `${item.width} / ${item.height}`;
      stylized.addEventListener('load', () => {
        if (!(item.width && item.height) && stylized.naturalWidth) {
          compare.style.aspectRatio = `${stylized.naturalWidth} / ${stylized.naturalHeight}`;
        }
        card.classList.add('is-loaded');
      }, { once: true });
      original.src = item.original;
      stylized.src = item.image;
      stylized.alt = `Photo stylized with ${item.model}`;
      original.alt = 'Original photo';
      const range = $('.compare-range', card);
      range.setAttribute('aria-label', `Before/after divider for ${item.model}`);
      setPos(compare, state.sliderPos);

      const ext = extOfMime(item.mime);
      const dims = item.width && item.height ? `${item.width}×${item.height}` : '';
      const info = $('.result-info', card);
      info.textContent = [dims, ext === 'jpg' ? 'JPEG' : 'PNG'].filter(Boolean).join(' · ');
      // A comparison also reports what each output kept of the photo and its defects (server: photo_metrics).
      if (Number.isFinite(item.ssim) && Number.isFinite(item.darkSpots)) {
        info.textContent += ` · SSIM ${item.ssim.toFixed(2)} · dark spots ${item.darkSpots.toFixed(2)}%`;
        info.title = 'SSIM: how much of the photo\'s structure the output kept (1 = all). Dark spots: share of the '
          + 'image painted near-black where the photo is lit (droplets, holes); lower is better.';
      }
      const dl = $('a.download', card);
      dl.href = item.image;
      dl.download = `${stem}_${item.model}.${ext}`;
      dl.title = `Save ${dl.download}`;
      els.results.append(card);
    }

    els.emptyState.hidden = true;
    els.results.append(els.emptyState);
    els.clearResults.hidden = items.length === 0;
    const parts = [`${items.length} ${items.length === 1 ? 'result' : 'results'}`];
    if (items[0] && items[0].width) parts.push(`${items[0].width}×${items[0].height} px`);
    parts.push(`round trip ${formatMs(roundTripMs)}`);
    els.resultsMeta.textContent = parts.join(' · ');
  }

  // A finished video job: the stylized video (served by the server, which answers Range requests, so
  // the player can seek) and a download link with the server's file name.
  // append: beside the video cards already shown (jobs remembered from several tabs), not instead of them.
  function renderVideoResult(s, { file, model, styleFields = {} }, { append = false } = {}) {
    const info = modelByName(s.model || model) || {};
    const name = s.model || model;
    const card = els.videoResultTemplate.content.firstElementChild.cloneNode(true);
    card.dataset.model = name;
    card.dataset.job = s.id;
    card.dataset.testid = `video-${name}`;
    $('.result-name', card).textContent = name;
    const norm = $('.norm-chip', card);
    norm.textContent = info.norm || 'norm ?';
    norm.dataset.norm = info.norm || '';
    const ran = s.style || (isMultiStyle(info) ? (styleFields.style || styleFields.mix) : info.style) || '';
    const style = $('.style-chip', card);
    style.textContent = styleLabel(ran);
    style.title = ran;
    card.dataset.style = ran;
    const elapsed = $('.elapsed', card);
    elapsed.textContent = Number.isFinite(s.elapsed_s) ? `${s.elapsed_s.toFixed(1)} s` : '';

    const url = relativeURL(s.result || `${jobURL(s.id)}/result`);
    const video = $('video.result-video', card);
    if (s.width && s.height) video.style.aspectRatio = `${s.width} / ${s.height}`;
    video.setAttribute('aria-label', `${file.name || 'Video'} stylized with ${name}`);
    video.src = url;

    const dims = s.width && s.height ? `${s.width}×${s.height}` : '';
    const frames = Number.isFinite(s.frames_done) ? `${s.frames_done} frames` : '';
    const parts = [dims, frames, 'MP4', soundOf(s.audio)];
    const keep = Number.isFinite(s.expires_in_s) ? `kept on the server for about ${formatAbout(s.expires_in_s)}` : '';
    $('.result-info', card).textContent = [...parts, keep].filter(Boolean).join(' · ');
    const dl = $('a.download', card);
    dl.href = url;
    dl.download = s.filename || `${fileStem(file.name)}_${name}.mp4`;
    dl.title = `Save ${dl.download}`;

    if (append) {
      els.results.append(card, els.emptyState);
    } else {
      for (const u of state.resultURLs) URL.revokeObjectURL(u);
      state.resultURLs = [];
      els.results.classList.remove('is-restyled');
      els.results.replaceChildren(card, els.emptyState);
    }
    els.emptyState.hidden = true;
    state.shownJobs.add(s.id);
    els.clearResults.hidden = false;
    const shown = $$('.video-result', els.results).length;
    const took = Number.isFinite(s.elapsed_s) && `took ${s.elapsed_s < 60 ? `${s.elapsed_s.toFixed(1)} s` : formatClock(s.elapsed_s)}`;
    els.resultsMeta.textContent = shown > 1 ? `${shown} videos`
      : ['1 video', dims && `${dims} px`, frames, took].filter(Boolean).join(' · ');
    updateLinkSliders();
  }

  // "Link sliders" moves the before/after dividers of photos: hidden while only videos are shown (or made).
  function updateLinkSliders() {
    const photos = $('.result:not(.video-result)', els.results);
    const videos = $('.video-result', els.results) || state.runKind === 'video';
    els.linkSliders.closest('label').hidden = Boolean(videos && !photos);
  }

  // Deletes on the server the finished jobs whose cards are no longer on screen (nor set aside during a
  // run, to come back if it fails). Best effort: a job not deleted expires on the server.
  function tidyJobs() {
    const kept = (id) => [els.results, state.savedResults].some(
      (root) => root && $$('[data-job]', root).some((card) => card.dataset.job === id));
    for (const id of Array.from(state.shownJobs)) {
      if (kept(id)) continue;
      state.shownJobs.delete(id);
      deleteJob(id);
    }
  }

  // Another file was chosen: the videos of the last one go (from the screen and the server).
  function dropVideoResults() {
    let dropped = false;
    for (const root of [els.results, state.savedResults]) {
      if (!root) continue;
      for (const card of $$('.video-result', root)) {
        card.remove();
        dropped = true;
      }
    }
    tidyJobs();
    if (dropped && !state.running && !$('.result', els.results)) {
      els.emptyState.hidden = false;
      els.clearResults.hidden = true;
      els.resultsMeta.textContent = DEFAULT_META;
    }
    updateLinkSliders();
  }

  els.clearResults.addEventListener('click', () => {
    for (const card of $$('.result', els.results)) card.remove();
    for (const u of state.resultURLs) URL.revokeObjectURL(u);
    state.resultURLs = [];
    tidyJobs();
    els.emptyState.hidden = false;
    els.clearResults.hidden = true;
    els.resultsMeta.textContent = DEFAULT_META;
    updateLinkSliders();
  });

  // Before/after divider: pointer events on the image (mouse, pen, touch), a range input for the
  // keyboard (focus it with Tab, then arrows / Home / End / Page Up / Page Down).
  function setPos(compare, pos) {
    const p = Math.min(100, Math.max(0, pos));
    compare.style.setProperty('--pos', `${p}%`);
    const range = $('.compare-range', compare);
    if (range && Number(range.value) !== p) range.value = String(p);
    if (range) range.setAttribute('aria-valuetext', `${Math.round(p)}% original, ${Math.round(100 - p)}% stylized`);
    compare.classList.toggle('at-start', p < 12);
    compare.classList.toggle('at-end', p > 88);
  }

  function applyPos(compare, pos) {
    if (els.linkSliders.checked) {
      state.sliderPos = pos;
      for (const c of $$('.compare', els.results)) setPos(c, pos);
    } else {
      setPos(compare, pos);
    }
  }

  els.results.addEventListener('input', (e) => {
    if (!e.target.matches('.compare-range')) return;
    applyPos(e.target.closest('.compare'), Number(e.target.value));
  });

  els.results.addEventListener('pointerdown', (e) => {
    const compare = e.target.closest('.compare');
    if (!compare || (e.pointerType === 'mouse' && e.button !== 0)) return;
    e.preventDefault();
    const range = $('.compare-range', compare);
    range.focus({ preventScroll: true });
    const move = (ev) => {
      const rect = compare.getBoundingClientRect();
      if (rect.width > 0) applyPos(compare, ((ev.clientX - rect.left) / rect.width) * 100);
    };
    const end = () => {
      compare.classList.remove('is-dragging');
      compare.removeEventListener('pointermove', move);
      compare.removeEventListener('pointerup', end);
      compare.removeEventListener('pointercancel', end);
    };
    try { compare.setPointerCapture(e.pointerId); } catch (_) { /* synthetic pointer */ }
    compare.classList.add('is-dragging');
    compare.addEventListener('pointermove', move);
    compare.addEventListener('pointerup', end);
    compare.addEventListener('pointercancel', end);
    move(e);
  });

  // ------------------------------------------------------------------ start

  showStrength();
  updateRun();
  pollReady();
})();
