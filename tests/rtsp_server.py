"""A real RTSP camera for the tests: GStreamer's RTSP server (gst-rtsp-server) in a few lines.

Run with the system's python3 (``gi`` is a Debian package, python3-gi with
gir1.2-gst-rtsp-server-1.0, not in the virtual environment), as a subprocess the test starts
and stops (tests/integration/test_ingest_av.py's ``rtsp`` fixture):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --codec h264 --fps 30 [--user U --password P]

It serves a moving test picture at rtsp://127.0.0.1:PORT/cam and prints ``READY`` on stdout
once listening. Each client gets a pipeline of its own (not shared), so its stream starts with
a keyframe. Commands, one a line on stdin: ``stall`` (every client's pictures stop at a valve
while its session and connection stay open: a camera that hangs without closing), ``resume``.
It exits when stdin closes, so a test that dies takes its camera with it.
"""

from __future__ import annotations

import argparse
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ENCODERS = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} ! rtph264pay name=pay0 pt=96",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} ! rtph265pay name=pay0 pt=96",
    # A codec the ingest does not take (ENCODERS_CODECS), for the test of its refusal.
    "vp8": "vp8enc deadline=1 keyframe-max-dist={gop} ! rtpvp8pay name=pay0 pt=96",
    "mjpeg": "jpegenc ! rtpjpegpay name=pay0 pt=26",
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--codec", choices=sorted(ENCODERS), default="h264")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--gop", type=int, default=30, help="frames between keyframes")
    ap.add_argument("--user", default="")
    ap.add_argument("--password", default="")
    args = ap.parse_args()

    Gst.init(None)
    launch = (
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={args.width},height={args.height},"
        f"framerate={args.fps}/1 ! valve name=valve ! videoconvert ! video/x-raw,format=I420 ! "
        + ENCODERS[args.codec].format(gop=args.gop)
        + " )"
    )
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(False)
    valves: list = []
    stalled = threading.Event()

    def configured(_factory, media) -> None:
        valve = media.get_element().get_by_name("valve")
        valve.set_property("drop", stalled.is_set())
        valves.append(valve)

    factory.connect("media-configure", configured)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "camera")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("camera", "media.factory.access", True)
        permissions.add_permission_for_role("camera", "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {args.port}", file=sys.stderr, flush=True)
        return 1

    loop = GLib.MainLoop()

    def commands() -> None:
        for line in sys.stdin:
            word = line.strip()
            if word in ("stall", "resume"):
                stalled.set() if word == "stall" else stalled.clear()
                for valve in valves:
                    valve.set_property("drop", word == "stall")
                print("STALLED" if word == "stall" else "RESUMED", flush=True)
        GLib.idle_add(loop.quit)  # stdin closed: the test is over (or dead)

    threading.Thread(target=commands, daemon=True).start()
    print("READY", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
