"""Settings: the schema of ``configs/botsky.yaml`` and ``configs/bots.yaml``.

Only the composition root (``botsky.wiring`` / ``botsky.cli``) reads these; components take plain
arguments. Precedence: ``BOTSKY_*`` environment variables (nested with ``__``, e.g.
``BOTSKY_LEDGER__URL``) over the YAML file over the defaults here. Secrets (model API keys, app
passwords) never live in YAML: a bot names the environment variable or file that holds them.

Loading and error reporting (file, YAML line, field) live in ``botsky.configload``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_COLLECTIONS",
    "AccountConfig",
    "AudienceConfig",
    "BotConfig",
    "BotsFile",
    "ComposeConfig",
    "DispatchConfig",
    "FeedConfig",
    "IdentityConfig",
    "LedgerConfig",
    "LoggingConfig",
    "ModelsConfig",
    "OutcomesConfig",
    "PostingConfig",
    "PresenceConfig",
    "PriceConfig",
    "RecommendConfig",
    "ScaleConfig",
    "ScoringConfig",
    "Settings",
    "SimConfig",
    "SimEngineConfig",
    "SimFeedConfig",
    "SourceConfig",
    "WebConfig",
]

Provider = Literal["openai", "anthropic", "openai_compatible", "template"]
Picker = Literal["llm", "similar", "random", "noisy_oracle"]


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


# What botsky needs from the firehose: posts, engagement, the social graph, profiles (#nobot).
DEFAULT_COLLECTIONS = [
    "app.bsky.feed.post",
    "app.bsky.feed.like",
    "app.bsky.feed.repost",
    "app.bsky.graph.follow",
    "app.bsky.graph.block",
    "app.bsky.actor.profile",
]


class SourceConfig(_Strict):
    """Where events come from. ``name`` keys the saved cursor in the ledger.

    - ``replay``: a JSONL file of Jetstream v1 events (``path``), ends at EOF.
    - ``jetstream``: a Jetstream server (``url``, e.g. ``wss://jetstream2.us-east.bsky.network``);
      ``jetstream_version`` v2 (atproto's client, compressed) or v1 (``/subscribe`` JSON).
    - ``relay``: ``com.atproto.sync.subscribeRepos`` of a relay or PDS (``url``, e.g.
      ``wss://bsky.network`` or ``ws://localhost:2583``).
    - ``sim``: the simulated network (``botsky simulate`` sets it up).
    """

    kind: Literal["replay", "jetstream", "relay", "sim"] = "replay"
    path: Path | None = None
    url: str | None = None
    name: str = ""
    # Replay: resume from the saved cursor (off by default: a replay is a fixed experiment);
    # a replay's cursor is a position in the file, so it resumes exactly at the next line.
    # Live sources always resume, rewound by rewind_s (work is idempotent).
    resume: bool = False
    rewind_s: float = Field(default=5.0, ge=0)
    # Warm start: a restart reads this much stream before its low-water mark in observe-only
    # mode (presence, interests, handles, consent; no replies), bounded by what the server
    # keeps. 0: resume at the mark, cold.
    warm_start_s: float = Field(default=1800.0, ge=0)
    jetstream_version: Literal["v1", "v2"] = "v2"
    compress: bool = True
    collections: list[str] = Field(default_factory=lambda: list(DEFAULT_COLLECTIONS))
    # Reconnect backoff: jittered exponential from min to max; reset after a healthy minute.
    backoff_min_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    max_frame_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _needs_location(self) -> SourceConfig:
        if self.kind == "replay" and self.path is None:
            raise ValueError("source.kind 'replay' needs source.path")
        if self.kind in ("jetstream", "relay") and not self.url:
            raise ValueError(f"source.kind {self.kind!r} needs source.url")
        return self

    @property
    def cursor_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.kind}:{self.path if self.kind == 'replay' else self.url or ''}"


class IdentityConfig(_Strict):
    """DID → handle resolution for live networks (a self-hosted network sets its own PLC)."""

    plc_url: str = "https://plc.directory"
    cache_ttl_s: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=2_000_000, gt=0)
    # Resolve over the network (live); off, handles come only from #identity events and config.
    resolve: bool = False
    # How a handle is verified to point back at its DID: "dns" (DNS TXT, then /.well-known: the
    # public network) or "xrpc" (com.atproto.identity.resolveHandle on resolve_handle_url, for
    # a self-hosted PDS whose handles have no DNS, such as *.test).
    verify: Literal["dns", "xrpc"] = "dns"
    resolve_handle_url: str | None = None
    concurrency: int = Field(default=4, ge=1)
    queue_size: int = Field(default=10_000, ge=1)

    @model_validator(mode="after")
    def _xrpc_needs_url(self) -> IdentityConfig:
        if self.verify == "xrpc" and not self.resolve_handle_url:
            raise ValueError("identity.verify 'xrpc' needs identity.resolve_handle_url")
        return self


class LedgerConfig(_Strict):
    """``sqlite`` (a file under data_dir) or a ``postgresql://`` DSN."""

    url: str = "sqlite"
    # How long a ledger call keeps retrying while the database is unreachable (a restart, a
    # failover) before the error stops the run; work pauses meanwhile, nothing is dropped.
    retry_deadline_s: float = Field(default=300.0, ge=0)


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    # Also append JSON log lines to this file under data_dir (for `botsky scores --logs`).
    file: str | None = "botsky.log.jsonl"


class PresenceConfig(_Strict):
    window_s: float = Field(default=1800.0, gt=0)
    max_users: int = Field(default=1_000_000, gt=0)
    terms_per_user: int = Field(default=48, gt=0)
    texts_per_user: int = Field(default=5, gt=0)


class RecommendConfig(_Strict):
    top_k: int = Field(default=8, ge=1, le=50)
    cooldown_s: float = Field(default=86_400.0, ge=0)
    require_shared_language: bool = True


class DispatchConfig(_Strict):
    workers: int = Field(default=4, ge=1, le=1000)
    queue_size: int = Field(default=100, ge=1)
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    author_cooldown_s: float = Field(default=3600.0, ge=0)
    reply_to_bots: bool = False
    reply_to_replies: bool = True
    languages: list[str] = Field(default_factory=list)  # empty: any language
    # Let a finite source's queued work finish before exiting (replay, simulation).
    drain_on_eof: bool = True
    # Replays only: read the next event only once the queued posts are answered, so results
    # do not depend on model latency (a reply later in the file always sees the mention).
    # Never for live sources: the reader must not wait on a model there.
    lockstep: bool = False
    # On SIGTERM, how long replies already in flight may take to finish before they are
    # cancelled (a cancelled reply's claim is settled on the next start).
    shutdown_deadline_s: float = Field(default=30.0, ge=0)


class ModelsConfig(_Strict):
    """The bots' model endpoints: a free check at start, a circuit breaker during the run."""

    # At start, list each bot's models (free) and leave out a bot whose server does not answer
    # within check_timeout_s or refuses its key.
    check_at_start: bool = True
    check_timeout_s: float = Field(default=3.0, gt=0, le=60)
    # During the run: pause a bot after this many consecutive unavailability failures (after
    # the client's own retries); probe it again after pause_s, doubling up to max_pause_s.
    pause_after_failures: int = Field(default=3, ge=1)
    pause_s: float = Field(default=30.0, gt=0)
    max_pause_s: float = Field(default=600.0, gt=0)


class OutcomesConfig(_Strict):
    window_s: float = Field(default=86_400.0, gt=0)


class ScoringConfig(_Strict):
    # Log a reading every interval_s of stream time (the wall clock for live sources).
    interval_s: float = Field(default=60.0, gt=0)
    # Engagement (likes, reposts, quotes, author replies) is counted within this time after the
    # reply, over replies older than it (docs/statistics.md).
    engagement_horizon_s: float = Field(default=86_400.0, gt=0)
    # 1 - coverage of every interval; the family-wise error rate of the comparisons.
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    # Arms whose every mention used one of these pickers are control arms.
    control_pickers: list[str] = Field(default_factory=lambda: ["similar", "random"])


class ComposeConfig(_Strict):
    max_graphemes: int = Field(default=300, ge=20, le=300)
    max_bytes: int = Field(default=3000, ge=100, le=3000)
    allow_links: bool = False
    allow_other_mentions: bool = False


class PostingConfig(_Strict):
    """``dry_run`` logs what it would post; ``live`` posts through each bot's PDS."""

    mode: Literal["dry_run", "live"] = "dry_run"
    # dry_run keeps what it would post here (relative to data_dir); replicas may share it.
    dry_run_file: Path = Path("dry_run_posts.jsonl")
    pds_url: str = "https://bsky.social"  # the bots' PDS (entryway); a bot may not override yet
    # The PDS write budget per account (points; a create costs 3) and the share of it botsky
    # may use (all replicas together).
    points_per_hour: int = Field(default=5000, gt=0)
    points_per_day: int = Field(default=35_000, gt=0)
    budget_headroom: float = Field(default=0.8, gt=0, le=1)
    posts_per_minute: float = Field(default=10.0, gt=0)  # across all bots
    # How long a reply may wait for the write budget before it is refused (its claim fails
    # with the reason budget_spent, rate_limited or posts_per_minute). The budget's spends and
    # any 429 block live in the ledger: restarts and replicas share them.
    max_wait_s: float = Field(default=30.0, ge=0)
    # Every call to the PDS gives up after this many seconds. A create that times out, gets a
    # 5xx or loses its connection has an unknown outcome: its claim waits as 'retry' and is
    # settled later (looked up by its record key, posted again under it if absent).
    timeout_s: float = Field(default=10.0, gt=0)
    # Settling such a reply: the first attempt after retry_initial_s, doubling up to
    # retry_max_s; after retry_attempts no more creates (the claim fails once the PDS says the
    # reply is not there). Due claims are looked at every retry_initial_s.
    retry_attempts: int = Field(default=8, ge=1)
    retry_initial_s: float = Field(default=5.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    # Stop all posting (not ingestion) while this file exists or this env var is set non-empty.
    kill_switch_file: Path | None = None
    kill_switch_env: str | None = "BOTSKY_KILL_SWITCH"


class ScaleConfig(_Strict):
    """Replicas on one PostgreSQL ledger: who answers which posts (see botsky.partition)."""

    # None: partitioned whenever the ledger is PostgreSQL (one replica then owns everything).
    partitioned: bool | None = None
    partitions: int = Field(default=64, ge=1, le=4096)
    rebalance_s: float = Field(default=2.0, gt=0)
    group: str = "botsky"
    # Eligible posts of partitions this replica does not own, kept to answer after a takeover.
    handover_buffer: int = Field(default=10_000, ge=0)


class WebConfig(_Strict):
    """The in-process web app: /healthz, /readyz, /metrics, the leaderboard page."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Bearer token for every page but the health checks; required when host is not loopback.
    # Give it via BOTSKY_WEB__TOKEN rather than in this file.
    token: SecretStr | None = None
    # The page, /api and /metrics reload the ledger at most this often (seconds).
    refresh_s: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _token_off_loopback(self) -> WebConfig:
        loopback = self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")
        if self.enabled and not loopback and self.token is None:
            raise ValueError(
                f"web.host {self.host!r} is reachable from other machines: set a bearer token "
                "(BOTSKY_WEB__TOKEN)"
            )
        return self


class FeedConfig(_Strict):
    """The fair-exposure feed generator (``botsky.feed``), served by the web app.

    ``service_did`` is the feed service's ``did:web`` (its document is served at
    ``/.well-known/did.json``); ``publisher`` is the account whose repository holds the
    ``app.bsky.feed.generator`` record ``rkey`` (``botsky feed publish``).
    """

    enabled: bool = False
    service_did: str | None = None  # did:web:feed.example.com
    # Where the AppView reaches the service; default https://<the did:web host>.
    service_endpoint: str | None = None
    publisher: AccountConfig | None = None
    rkey: str = Field(default="botsky-fair", pattern=r"^[A-Za-z0-9._:~-]{1,512}$")
    display_name: str = "botsky: fair replies"
    description: str = (
        "Recent replies of botsky's bots (LLMs and control arms), shown equally: every page "
        "interleaves the bots' arms in a random round-robin, so engagement is measured per "
        "view without any ranking bias."
    )
    accepts_interactions: bool = True
    content_mode: Literal["unspecified", "video"] = "unspecified"
    # The mention field that makes an arm: the leaderboard's headline grouping by default.
    arm_by: Literal["model", "persona", "bot", "picker", "provider"] = "model"
    max_age_s: float = Field(default=48 * 3600.0, gt=0)  # replies older than this leave
    max_impressions_per_item: int = Field(default=200, ge=1)  # the per-item serve cap
    # Viewer DIDs are personal data: kept this long (to join engagement), then nulled.
    viewer_retention_s: float = Field(default=7 * 86400.0, gt=0)
    # An engagement joins the actor's latest exposure of the item served this long before it.
    attribution_window_s: float = Field(default=86400.0, gt=0)
    viewer_rate_per_s: float = Field(default=5.0, gt=0)
    viewer_burst: int = Field(default=30, ge=1)
    ip_rate_per_s: float = Field(default=20.0, gt=0)  # requests without a valid token
    ip_burst: int = Field(default=60, ge=1)
    refresh_s: float = Field(default=5.0, gt=0)
    session_ttl_s: float = Field(default=3600.0, gt=0)
    max_sessions: int = Field(default=20_000, ge=1)
    record_timeout_s: float = Field(default=5.0, gt=0)
    # Seconds of clock skew allowed on exp/iat; 0 like the reference verifyJwt.
    jwt_leeway_s: int = Field(default=0, ge=0, le=300)
    privacy_policy_url: str | None = None
    terms_of_service_url: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> FeedConfig:
        from botsky.compose import grapheme_len

        if grapheme_len(self.display_name) > 24 or len(self.display_name.encode()) > 240:
            raise ValueError("feed.display_name must be at most 24 graphemes (240 bytes)")
        if not self.display_name.strip():
            raise ValueError("feed.display_name must not be empty")
        if grapheme_len(self.description) > 300 or len(self.description.encode()) > 3000:
            raise ValueError("feed.description must be at most 300 graphemes (3000 bytes)")
        if self.viewer_retention_s < self.attribution_window_s:
            raise ValueError(
                "feed.viewer_retention_s must be at least feed.attribution_window_s: engagement "
                "is joined to viewers until the window closes"
            )
        if self.service_did is not None and not self.service_did.startswith("did:web:"):
            raise ValueError("feed.service_did must be a did:web (e.g. did:web:feed.example.com)")
        if self.enabled:
            if self.service_did is None:
                raise ValueError("feed.enabled needs feed.service_did (a did:web)")
            if self.publisher is None or not self.publisher.did:
                raise ValueError(
                    "feed.enabled needs feed.publisher with its did (the repo of the record)"
                )
        return self

    @property
    def endpoint(self) -> str:
        """The service endpoint: configured, or https://<host> of the did:web."""
        if self.service_endpoint:
            return self.service_endpoint.rstrip("/")
        assert self.service_did is not None
        host = self.service_did.removeprefix("did:web:").replace("%3A", ":")
        scheme = "http" if host == "localhost" or host.startswith("localhost:") else "https"
        return f"{scheme}://{host}"

    @property
    def feed_uri(self) -> str:
        """``at://<publisher did>/app.bsky.feed.generator/<rkey>``."""
        did = self.publisher.did if self.publisher is not None else None
        return f"at://{did}/app.bsky.feed.generator/{self.rkey}"


class AudienceConfig(_Strict):
    """Consent. ``opt_in`` answers and mentions only users who opted in."""

    mode: Literal["opt_in", "open"] = "opt_in"
    acknowledge_open_audience: bool = False
    allow_list: list[str] = Field(default_factory=list)
    # Daily caps that protect real people from a bot army (null: no cap).
    mentions_per_target_per_day: int | None = Field(default=1, ge=0)
    replies_per_author_per_day: int | None = Field(default=3, ge=0)
    # A reply to a bot containing one of these (case-insensitive, whole words) opts out.
    stop_phrases: list[str] = Field(
        default_factory=lambda: ["stop", "unsubscribe", "opt out", "opt-out", "go away"]
    )
    nobot_tag: str = "#nobot"  # in a profile description: never answer or mention this user

    @model_validator(mode="after")
    def _open_needs_ack(self) -> AudienceConfig:
        if self.mode == "open" and not self.acknowledge_open_audience:
            raise ValueError(
                "audience.mode 'open' answers strangers; it is only for networks you operate "
                "and needs audience.acknowledge_open_audience: true"
            )
        return self


class SimEngineConfig(_Strict):
    """Who plays the simulated users under ``botsky simulate --engine llm``: a model of its own,
    configured like a bot's (provider, model, base_url, key variable), never a model under test
    unless ``allow_arm_model`` says so (a model would then be graded by itself)."""

    provider: Literal["openai", "anthropic", "openai_compatible"] | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None  # default: OPENAI_API_KEY / ANTHROPIC_API_KEY
    temperature: float = Field(default=0.9, ge=0, le=2)
    max_tokens: int = Field(default=600, ge=16, le=8192)
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    allow_arm_model: bool = False

    @model_validator(mode="after")
    def _complete(self) -> SimEngineConfig:
        if (self.provider is None) != (self.model is None):
            raise ValueError("sim.engine needs both provider and model (or neither)")
        if self.provider == "openai_compatible" and not self.base_url:
            raise ValueError("sim.engine provider 'openai_compatible' needs base_url")
        return self

    @property
    def default_key_env(self) -> str | None:
        if self.api_key_env:
            return self.api_key_env
        return {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}.get(
            self.provider or ""
        )


class SimFeedConfig(_Strict):
    """The simulated users who subscribe to botsky's fair-exposure feed (``botsky.feed``).

    A user subscribes with probability ``subscribers`` (a hash of the seed and the user, so the
    rest of the world draws the same numbers whatever the share); a subscriber reads one page of
    ``page_size`` items of the feed at every logon, through the feed service's own
    ``getFeedSkeleton`` and ``sendInteractions``. 0 turns the feed off in the simulation.
    """

    subscribers: float = Field(default=0.2, ge=0, le=1)
    page_size: int = Field(default=10, ge=1, le=100)  # getFeedSkeleton's limit


class SimConfig(_Strict):
    """``botsky simulate`` only (the rest of botsky ignores it)."""

    engine: SimEngineConfig = Field(default_factory=SimEngineConfig)
    feed: SimFeedConfig = Field(default_factory=SimFeedConfig)


class PriceConfig(_Strict):
    input_per_mtok: float = Field(default=0.0, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)


class Settings(BaseSettings):
    """The service configuration (``configs/botsky.yaml`` + ``BOTSKY_*`` env)."""

    model_config = SettingsConfigDict(
        env_prefix="BOTSKY_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Path("./data")
    bots_file: Path = Path("bots.yaml")  # relative to the YAML file that names it
    seed: int | None = None
    cursor_every: int = Field(default=100, ge=1)
    source: SourceConfig = Field(default_factory=lambda: SourceConfig(path=Path("events.jsonl")))
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    presence: PresenceConfig = Field(default_factory=PresenceConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    outcomes: OutcomesConfig = Field(default_factory=OutcomesConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    compose: ComposeConfig = Field(default_factory=ComposeConfig)
    posting: PostingConfig = Field(default_factory=PostingConfig)
    audience: AudienceConfig = Field(default_factory=AudienceConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    feed: FeedConfig = Field(default_factory=FeedConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    sim: SimConfig = Field(default_factory=SimConfig)

    @model_validator(mode="after")
    def _feed_needs_web(self) -> Settings:
        if self.feed.enabled and not self.web.enabled:
            raise ValueError("feed.enabled needs web.enabled: the feed is served by the web app")
        return self


class AccountConfig(_Strict):
    """A bot's Bluesky account. The app password comes from an env var or a file, never YAML."""

    handle: str
    did: str | None = None
    password_env: str | None = None
    password_file: Path | None = None


class BotConfig(_Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    persona: Annotated[str, Field(min_length=1)]
    provider: Provider
    model: Annotated[str, Field(min_length=1)]
    base_url: str | None = None
    api_key_env: str | None = None  # default: OPENAI_API_KEY / ANTHROPIC_API_KEY
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=400, ge=16, le=8192)
    account: AccountConfig
    weight: float = Field(default=1.0, gt=0)
    languages: list[str] = Field(default_factory=lambda: ["en"])
    picker: Picker = "llm"
    # noisy_oracle only (a planted arm of the simulation): the chance of mentioning the
    # best-fitting candidate by the world's truth; otherwise a uniformly random one.
    quality: float | None = Field(default=None, ge=0, le=1)
    # openai_compatible servers differ: json_schema, json_object, or none (prompt + lenient parse).
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"

    @model_validator(mode="after")
    def _provider_rules(self) -> BotConfig:
        if self.provider == "openai_compatible" and not self.base_url:
            raise ValueError("provider 'openai_compatible' needs base_url")
        if self.provider == "template" and self.picker == "llm":
            raise ValueError(
                "provider 'template' has no model to pick with; use picker similar, random or "
                "noisy_oracle"
            )
        if self.picker == "noisy_oracle" and self.quality is None:
            raise ValueError("picker 'noisy_oracle' needs quality (0 to 1)")
        if self.picker != "noisy_oracle" and self.quality is not None:
            raise ValueError("quality is a setting of picker 'noisy_oracle' only")
        return self

    @property
    def default_key_env(self) -> str | None:
        if self.api_key_env:
            return self.api_key_env
        return {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}.get(self.provider)


class BotsFile(_Strict):
    bots: list[BotConfig] = Field(min_length=1)
