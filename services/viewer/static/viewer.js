"use strict";
// The web viewer's page: the video is MJPEG in an <img>, the numbers come as Server-Sent
// Events, and the drift chart is drawn by hand on a canvas (a chart library would have to
// be downloaded or bundled; the chart is one polyline per stream).

(() => {
  const $ = (id) => document.getElementById(id);
  // Opened as /?token=..., the page also gets a cookie; the token is passed on in every URL
  // too, for browsers that keep no cookies.
  const token = new URLSearchParams(location.search).get("token");
  const withToken = (url) =>
    token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;

  const COLOURS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176"];
  const MIN_Y_TOP = 0.5; // as the desktop plot: a still scene looks still
  const drift = new Map(); // stream -> [[t_capture, drift], ...], oldest first; drift null: a restart
  let history = 300;
  let chartPending = false;

  const fmt = (v, digits = 0) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));
  const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "");

  function setStatus(text, cls) {
    const s = $("status");
    s.textContent = text;
    s.className = "status " + cls;
  }

  // -- video: the server sends the newest frame whenever this browser is ready for one ----------
  const video = $("video");
  function startVideo() {
    video.src = withToken("video.mjpg?t=" + Date.now());
  }
  video.addEventListener("error", () => setTimeout(startVideo, 2000)); // the viewer restarted
  startVideo();

  // -- numbers ----------------------------------------------------------------------------------
  function onState(s) {
    const t = s.totals || {};
    $("frames-in").textContent = fmt(t.frames_in);
    $("embedded").textContent = fmt(t.embedded);
    $("dropped").textContent = fmt(t.dropped);
    $("workers").textContent = fmt(t.workers);
    $("fps").textContent = fmt(t.fps, 1);

    const body = $("streams").tBodies[0];
    body.replaceChildren(
      ...s.streams.map((st) => {
        const row = document.createElement("tr");
        const cells = [
          st.stream + (st.ended ? " (ended)" : ""),
          fmt(st.similarity, 3),
          fmt(st.drift, 3),
          fmt(st.fps_in, 1),
          fmt(st.fps_embedded, 1),
          fmt(st.dropped),
        ];
        for (const text of cells) {
          const td = document.createElement("td");
          td.textContent = text;
          row.append(td);
        }
        return row;
      })
    );

    history = s.history || history;
    for (const [name, d] of Object.entries(s.drift || {})) {
      const pts = d.reset ? [] : drift.get(name) || [];
      pts.push(...d.points);
      drift.set(name, pts.slice(-history));
    }
    if (!chartPending) {
      chartPending = true;
      requestAnimationFrame(() => {
        chartPending = false;
        drawChart();
      });
    }
    $("search-panel").hidden = !s.search;
    $("timeline-panel").hidden = !s.search; // both read the database
    if (s.waiting) {
      setStatus(`live: ${s.waiting}`, "live"); // the page is live; the viewer waits for the core
    } else {
      setStatus(`live: ${s.streams.length} stream(s), ${fmt(s.viewer && s.viewer.frames_received)} frames received`,
                "live");
    }
  }

  // -- the drift chart --------------------------------------------------------------------------
  function drawChart() {
    const canvas = $("chart");
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height;
    const m = { l: 44, r: 10, t: 10, b: 28 };
    const w = W - m.l - m.r, h = H - m.t - m.b;
    ctx.clearRect(0, 0, W, H);
    ctx.font = "11px system-ui, sans-serif";

    let newest = -Infinity, oldest = Infinity, top = MIN_Y_TOP;
    for (const pts of drift.values()) {
      if (!pts.length) continue;
      newest = Math.max(newest, pts[pts.length - 1][0]);
      oldest = Math.min(oldest, pts[0][0]);
      for (const p of pts) if (p[1] !== null) top = Math.max(top, p[1] * 1.05);
    }
    top = Math.ceil(top * 10) / 10; // grid lines on round numbers
    const span = Math.max(1, newest - oldest);
    const x = (t) => m.l + w - ((newest - t) / span) * w;
    const y = (d) => m.t + h - (Math.max(0, d) / top) * h;

    // Grid and axis labels.
    ctx.strokeStyle = "#3a3f46";
    ctx.fillStyle = "#9aa0a6";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const steps = Math.round(top * 10) % 4 === 0 ? 4 : Math.round(top * 10) % 5 === 0 ? 5 : 2;
    for (let i = 0; i <= steps; i++) {
      const v = (top * i) / steps;
      ctx.beginPath();
      ctx.moveTo(m.l, y(v));
      ctx.lineTo(m.l + w, y(v));
      ctx.stroke();
      ctx.fillText(v.toFixed(2), m.l - 4, y(v));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let i = 0; i <= 4; i++) {
      const ago = (span * (4 - i)) / 4;
      ctx.fillText(ago === 0 ? "0" : "-" + ago.toFixed(ago < 10 ? 1 : 0), m.l + (w * i) / 4, m.t + h + 6);
    }

    if (newest === -Infinity) {
      ctx.textBaseline = "middle";
      ctx.fillText("waiting for metrics", m.l + w / 2, m.t + h / 2);
      return;
    }
    let i = 0;
    ctx.textAlign = "left";
    for (const [name, pts] of [...drift.entries()].sort()) {
      const colour = COLOURS[i % COLOURS.length];
      ctx.strokeStyle = colour;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let gap = true; // no line into the first point, nor across a stream's restart (a null drift)
      for (const p of pts) {
        if (p[1] === null) {
          gap = true;
        } else {
          if (gap) ctx.moveTo(x(p[0]), y(p[1]));
          else ctx.lineTo(x(p[0]), y(p[1]));
          gap = false;
        }
      }
      ctx.stroke();
      ctx.fillStyle = colour;
      ctx.fillText(name, m.l + 8, m.t + 4 + 14 * i);
      i++;
    }
  }

  // -- thumbnails (scene changes and search results) --------------------------------------------
  function thumb(src, title, detail) {
    const box = document.createElement("figure");
    box.className = "thumb";
    box.style.margin = "0";
    if (src) {
      const img = document.createElement("img");
      img.src = withToken(src);
      img.alt = title;
      box.append(img);
    } else {
      const none = document.createElement("div");
      none.className = "none";
      none.textContent = "no image";
      box.append(none);
    }
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    const more = document.createElement("div");
    more.textContent = detail;
    caption.append(more);
    box.append(caption);
    return box;
  }

  function onScenes(list) {
    const box = $("scenes");
    if (!list.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "none yet";
      box.replaceChildren(p);
      return;
    }
    box.replaceChildren(
      ...list.map((s) => thumb(s.thumbnail, `${s.stream} #${s.seq} ${s.kinds.join(", ").replaceAll("_", " ")}`,
                               `drift ${fmt(s.drift, 3)}, ${clock(s.t_capture)}`))
    );
  }

  // -- search -----------------------------------------------------------------------------------
  function note(text, error = false) {
    const n = $("search-note");
    n.textContent = text;
    n.className = "note" + (error ? " error" : "");
  }

  $("search-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("search-text").value.trim();
    if (!text) return;
    note("searching (the first search loads the model)");
    try {
      const r = await fetch(withToken("api/search?k=12&text=" + encodeURIComponent(text)));
      const body = await r.json();
      if (!r.ok) {
        note(body.error || r.statusText, true);
        return;
      }
      $("search-results").replaceChildren(
        ...body.results.map((hit) => {
          // Its own stored thumbnail when it has one; else the last snapshot of its stream before it.
          const shows = !hit.thumbnail && hit.snapshot_seq !== null && hit.snapshot_seq !== hit.seq
            ? ` (snapshot of #${hit.snapshot_seq})` : "";
          const when = hit.time ? new Date(hit.time).toLocaleString() : "";
          return thumb(hit.thumbnail || hit.snapshot, `${hit.run} ${hit.stream} #${hit.seq}`,
                       `similarity ${fmt(hit.similarity, 3)}${shows}, ${when}`);
        })
      );
      note(body.note || `${body.results.length} frame(s) for "${body.text}"`);
    } catch (err) {
      note(String(err), true);
    }
  });

  // -- timeline: drift over a chosen period from the database, scene changes and alerts on it;
  //    a click opens that moment's stored frame ---------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  const MARK_COLOURS = { scene_change: "#ffffff", frozen: "#4fc3f7", blackout: "#e57373" };

  function showMoment(run, stream, seq, what) {
    const img = $("timeline-frame");
    img.src = withToken(`api/frame.jpg?run=${encodeURIComponent(run)}&stream=${encodeURIComponent(stream)}&seq=${seq}`);
    $("timeline-caption").textContent = `${run} ${stream} #${seq}${what ? " " + what : ""}`;
    $("timeline-moment").hidden = false;
  }

  function drawTimeline(body) {
    const svg = $("timeline-chart");
    svg.replaceChildren();
    const t0 = Date.parse(body.since), t1 = Date.parse(body.until);
    const span = Math.max(1, t1 - t0);
    const x = (iso) => ((Date.parse(iso) - t0) / span) * 1000;
    let top = 0.05;
    for (const points of Object.values(body.streams)) for (const p of points) top = Math.max(top, p[2] ?? 0);
    const y = (d) => 230 - (d / top) * 220;
    Object.entries(body.streams).forEach(([stream, points], i) => {
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.filter((p) => p[1] !== null).map((p) => `${x(p[0])},${y(p[1])}`).join(" "));
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", COLOURS[i % COLOURS.length]);
      line.setAttribute("vector-effect", "non-scaling-stroke");
      line.dataset.stream = stream;
      svg.append(line);
    });
    for (const e of body.events) {
      const mark = document.createElementNS(SVG, "rect");
      mark.setAttribute("x", x(e.time) - 3);
      mark.setAttribute("y", 0);
      mark.setAttribute("width", 6);
      mark.setAttribute("height", 240);
      mark.setAttribute("fill", MARK_COLOURS[e.kind.split(":")[0]] || "#fff176");
      mark.setAttribute("fill-opacity", "0.6");
      mark.setAttribute("class", "mark");
      mark.dataset.kind = e.kind;
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${e.kind.replaceAll("_", " ")}: ${e.stream} #${e.seq}, ${new Date(e.time).toLocaleString()}`;
      mark.append(title);
      mark.addEventListener("click", (ev) => {
        ev.stopPropagation();
        showMoment(e.run, e.stream, e.seq, e.kind.replaceAll("_", " "));
      });
      svg.append(mark);
    }
    // A click elsewhere: the first frame of the nearest moment drawn, of any stream.
    svg.onclick = (ev) => {
      const box = svg.getBoundingClientRect();
      const at = t0 + ((ev.clientX - box.left) / box.width) * span;
      let best = null;
      for (const [stream, points] of Object.entries(body.streams)) {
        for (const p of points) {
          const d = Math.abs(Date.parse(p[0]) - at);
          if (!best || d < best.d) best = { d, run: p[3], stream, seq: p[4] };
        }
      }
      if (best) showMoment(best.run, best.stream, best.seq, "");
    };
  }

  $("timeline-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const name of ["run", "stream", "since", "until"]) {
      const value = $("timeline-" + name).value.trim();
      if (value) params.set(name, value);
    }
    const n = $("timeline-note");
    try {
      const r = await fetch(withToken("api/timeline?" + params));
      const body = await r.json();
      if (!r.ok) {
        n.textContent = body.error || r.statusText;
        n.className = "note error";
        return;
      }
      const frames = Object.values(body.streams).reduce((a, p) => a + p.length, 0);
      n.textContent = body.since
        ? `${new Date(body.since).toLocaleString()} to ${new Date(body.until).toLocaleString()}: ` +
          `${frames} moment(s), ${body.events.length} scene change(s) and alert(s); click for the frame`
        : "nothing recorded in that period";
      n.className = "note";
      if (body.since) drawTimeline(body);
    } catch (err) {
      n.textContent = String(err);
      n.className = "note error";
    }
  });

  // -- live numbers: EventSource reconnects by itself after a drop --------------------------------
  const events = new EventSource(withToken("events"));
  events.addEventListener("state", (e) => onState(JSON.parse(e.data)));
  events.addEventListener("scenes", (e) => onScenes(JSON.parse(e.data)));
  events.addEventListener("error", () => setStatus("connection lost: retrying", "lost"));
  drawChart();
})();
