"""The viewer's settings: where to subscribe, the window, the web page and its search box."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.shared.endpoints import is_loopback_host
from encoders.shared.settings import CoreConnection, ModelSettings, SettingsError, StreamDown, setting
from encoders.shared.storage.config import EF_SEARCH_MAX, SEARCH_EF_TEXT, DatabaseConfig


@dataclass
class ViewerConfig(StreamDown, DatabaseConfig, ModelSettings, CoreConnection):
    """With --database-url the web page gets a search box: sentences are embedded with the model the frames
    were (ENCODERS_MODEL, ENCODERS_PRETRAINED), and search results show snapshots from --runs-dir."""

    database_url: str = setting(
        "", "PostgreSQL holding the embeddings: turns on the web page's search box (empty = no search)", secret="url"
    )
    frames: str = setting("", "The frames publisher (empty: the one the core at --core names)")
    metrics: str = setting("", "The metrics publisher (empty: the one the core at --core names)")
    plot: bool = setting(True, "Show the matplotlib drift plot beside the video")
    window: str = setting("encoders", "Window title")
    history: int = setting(300, "Drift values per stream kept for the plot", minimum=2)
    web: str = setting("", "Serve the web viewer on HOST:PORT (PORT alone: localhost); no display needed then")
    web_token: str = setting(
        "",
        "Secret every web request must carry (?token=... or 'Authorization: Bearer ...'); required when --web "
        "listens beyond localhost",
        secret="value",
    )
    web_cert: str = setting(
        "", "TLS certificate (PEM) for the web viewer: https:// instead of http://, so the token is not sent in clear"
    )
    web_key: str = setting("", "The TLS certificate's private key (PEM), with --web-cert")
    web_max_connections: int = setting(
        64,
        "Connections the web viewer holds at once; past it a connection that has shown no token yet makes room "
        "(counted 'evicted'), else the new one is closed at once (counted 'refused')",
        minimum=1,
    )
    web_max_per_client: int = setting(
        16,
        "Connections one client (one remote address) holds at once; more are closed at once (counted 'refused'): "
        "a browser opens 6 at most, and a video or an event stream one each",
        minimum=1,
    )
    web_token_timeout: float = setting(
        5.0,
        "Seconds a web connection may stay open before a request on it has passed the token check (any request, "
        "with no token set); then it is cut off (counted 'token_timeouts'): strangers' connections go quickly",
        minimum=0.1,
    )
    web_header_timeout: float = setting(
        10.0,
        "Seconds a web client may take to send a request's line and headers (or the TLS handshake) before it is "
        "cut off (counted 'header_timeouts')",
        minimum=0.1,
    )
    web_body_timeout: float = setting(
        30.0,
        "Seconds a request's body (an uploaded picture) may stop coming before the connection is cut off "
        "(counted 'body_timeouts'); a body that keeps coming is never cut",
        minimum=0.1,
    )
    # stream_down_after: the web page lists a stream down (settings.StreamDown)
    with_window: bool = setting(False, "With --web: open the video window too")
    search_ef_text: int = setting(
        SEARCH_EF_TEXT,
        "hnsw.ef_search of the search box's queries (as `encoders search --text`)",
        minimum=1,
        maximum=EF_SEARCH_MAX,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.web_cert) != bool(self.web_key):
            raise SettingsError("--web-cert and --web-key (ENCODERS_WEB_CERT, ENCODERS_WEB_KEY) go together")
        if not self.web:
            return
        host, _ = self.web_address()
        if not self.web_token and not is_loopback_host(host):
            raise SettingsError(
                f"--web {self.web} listens beyond this machine: set a token too (--web-token or ENCODERS_WEB_TOKEN), "
                "which every browser then needs (?token=...)"
            )

    @property
    def search(self) -> bool:
        """Whether the page has a search box: only when a database is named (the viewer never starts one)."""
        return bool(self.database_url)

    def web_address(self) -> tuple[str, int]:
        """--web as (host, port). 'PORT' and ':PORT' mean localhost; IPv6 as '[::1]:PORT'."""
        host, sep, port = self.web.rpartition(":")
        if not sep:
            host, port = "", self.web
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not port.isdigit() or not 0 <= int(port) <= 65535 or (":" in host and not self.web.startswith("[")):
            raise SettingsError(f"--web / ENCODERS_WEB must be HOST:PORT, PORT or [IPv6]:PORT, got {self.web!r}")
        return host or "127.0.0.1", int(port)
