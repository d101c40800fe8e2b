"""``livemigrate consume --engine kcl``: run the KCL's MultiLangDaemon with our processor.

The command checks everything first (a Kinesis change source, the migration, the optional
extra ``livemigrate[kcl]`` and Java 17), writes the daemon's properties and a launcher for the
record processor into a work directory, starts the daemon and waits. SIGTERM or Ctrl-C is
passed on to the daemon as one SIGTERM: it asks each processor to shut down, releases its
leases and exits; the command then exits 0, like the built-in consumer.

The KCL keeps its own leases and checkpoints in DynamoDB tables named after the application,
``livemigrate-kcl-<migration id>`` (plus ``-CoordinatorState`` and ``-WorkerMetricStats``), on
the same endpoint as the migration. Run the command on several machines to share the shards.

Exit codes (``livemigrate.exitcodes``): 0 stopped by a signal; 2 bad input or a missing
prerequisite (the extra, Java 17, a change source that is not Kinesis, a stream refused by the
version rule); 4 the daemon ended by itself (its log is above; checkpoints are kept: run the
command again).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from livemigrate.errors import ConfigError, PreflightError
from livemigrate.exitcodes import ExitCode
from livemigrate.process import worker_id
from stream_consumer.kcl.processor import FATAL_ENV

log = logging.getLogger("livemigrate.kcl")

DAEMON_CLASS = "software.amazon.kinesis.multilang.MultiLangDaemon"
# The KCL forces HTTP/2 on its Kinesis client; CBOR off keeps the wire format JSON, which
# every endpoint (moto included) speaks.
JVM_FLAGS = ("-Daws.cborEnabled=false",)
JAVA_MAJOR = 17
SHUTDOWN_GRACE_MILLIS = 20_000
KCLPY_VERSION = "3.1.3"
INSTALL_FIX = (
    f"install the optional extra: pip install 'livemigrate[kcl]' (amazon-kclpy=={KCLPY_VERSION}, "
    f"whose build fetches the KCL's jars with Maven); Java {JAVA_MAJOR} must be on PATH"
)


@dataclass(frozen=True)
class KclOptions:
    """What the daemon's properties are written from."""

    application: str
    stream: str
    region: str
    executable: str
    endpoint: str | None = None
    worker: str = ""
    failover_seconds: float = 30.0
    poll_interval: float = 0.5
    batch_size: int = 1000
    extra: Mapping[str, str] = field(default_factory=dict)


def properties(options: KclOptions) -> dict[str, str]:
    """The MultiLangDaemon's properties (``extra`` overrides any of them)."""
    stream_key = "streamArn" if options.stream.startswith("arn:") else "streamName"
    failover = round(options.failover_seconds * 1000)
    values = {
        "executableName": options.executable,
        stream_key: options.stream,
        "applicationName": options.application,
        "AwsCredentialsProvider": "DefaultCredentialsProvider",
        "processingLanguage": f"python/{sys.version_info.major}.{sys.version_info.minor}",
        # The consumer starts before the backfill: every change since then is applied.
        "initialPositionInStream": "TRIM_HORIZON",
        "regionName": options.region,
        "metricsLevel": "NONE",
        "retrievalMode": "POLLING",
        "failoverTimeMillis": str(failover),
        "leaseAssignmentIntervalMillis": str(failover),
        "idleTimeBetweenReadsInMillis": str(round(options.poll_interval * 1000)),
        "maxRecords": str(options.batch_size),
        "parentShardPollIntervalMillis": str(min(10_000, failover)),
        "shardSyncIntervalMillis": str(max(1_000, min(60_000, failover))),
        # On SIGTERM the daemon waits this long for its processors to shut down and for its
        # leases to be released (the default, 0, gives up at once).
        "shutdownGraceMillis": str(SHUTDOWN_GRACE_MILLIS),
    }
    if options.worker:
        values["workerId"] = options.worker
    if options.endpoint:
        values["kinesisEndpoint"] = options.endpoint
        values["dynamoDBEndpoint"] = options.endpoint
    return {**values, **options.extra}


def render(values: Mapping[str, str]) -> str:
    return "".join(f"{key} = {value}\n" for key, value in values.items())


def parse_extra(pairs: Sequence[str]) -> dict[str, str]:
    """``--kcl-property KEY=VALUE`` flags as a mapping."""
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--kcl-property {pair!r} is not KEY=VALUE",
                "write it as --kcl-property failoverTimeMillis=10000",
            )
        extra[key.strip()] = value.strip()
    return extra


def kclpy_jars() -> list[str]:
    """The KCL's jars, as amazon-kclpy installed them (PreflightError without the extra)."""
    try:
        import amazon_kclpy
    except ImportError as exc:
        raise PreflightError(
            "consume --engine kcl needs the Kinesis Client Library, which is not installed",
            INSTALL_FIX,
        ) from exc
    jars = sorted(str(p) for p in (Path(amazon_kclpy.__file__).parent / "jars").glob("*.jar"))
    if not jars:
        raise PreflightError("amazon-kclpy is installed without the KCL's jars", INSTALL_FIX)
    return jars


def java_major(version_text: str) -> int | None:
    """The major version in ``java -version``'s output (``"17.0.15"`` -> 17, ``"1.8"`` -> 8)."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def find_java() -> str:
    """A Java of at least ``JAVA_MAJOR`` (PreflightError naming the fix otherwise)."""
    java = shutil.which("java")
    if java is None:
        raise PreflightError(
            f"consume --engine kcl needs Java {JAVA_MAJOR}: no java on PATH", INSTALL_FIX
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    major = java_major(out.stderr + out.stdout)
    if major is None or major < JAVA_MAJOR:
        raise PreflightError(
            f"consume --engine kcl needs Java {JAVA_MAJOR} or later; {java} is {major or '?'}",
            f"install Java {JAVA_MAJOR} (e.g. the openjdk-{JAVA_MAJOR}-jre-headless package)",
        )
    return java


def write_workdir(options: KclOptions, workdir: Path) -> Path:
    """The properties file, a launcher for the processor and a log configuration."""
    launcher = workdir / "processor.sh"
    launcher.write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m stream_consumer.kcl.processor\n",
        encoding="utf-8",
    )
    launcher.chmod(0o755)
    path = workdir / "livemigrate-kcl.properties"
    path.write_text(render(properties(_with_executable(options, str(launcher)))), "utf-8")
    (workdir / "logback.xml").write_text(LOGBACK, encoding="utf-8")
    return path


def _with_executable(options: KclOptions, executable: str) -> KclOptions:
    return KclOptions(**{**options.__dict__, "executable": executable})


def daemon_command(java: str, jars: Sequence[str], workdir: Path, props: Path) -> list[str]:
    classpath = os.pathsep.join([*jars, str(workdir)])
    return [
        java,
        *JVM_FLAGS,
        "-cp",
        classpath,
        DAEMON_CLASS,
        "--properties-file",
        str(props),
        "--log-configuration",
        str(workdir / "logback.xml"),
    ]


# The daemon's own log: warnings and lease changes, on stderr (stdout stays quiet).
LOGBACK = """<configuration>
  <appender name="ERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%d{HH:mm:ss.SSS} kcl %-5level %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <logger name="software.amazon.kinesis.leases" level="INFO"/>
  <logger name="software.amazon.kinesis.multilang.MultiLangDaemon" level="INFO"/>
  <!-- The processors' stderr is passed through as it is; not logged a second time. -->
  <logger name="software.amazon.kinesis.multilang.DrainChildSTDERRTask" level="OFF"/>
  <root level="WARN"><appender-ref ref="ERR"/></root>
</configuration>
"""


def _stop_with_parent() -> None:
    """Linux: the daemon gets SIGTERM when this process dies (even by SIGKILL), so a killed
    command leaves no daemon holding leases behind; elsewhere nothing is done."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


class Daemon:
    """The running daemon: signals are passed on once, the exit status is interpreted."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], fatal: Path) -> None:
        self.fatal = fatal
        self.stopped = False
        self.process = subprocess.Popen(
            list(command),
            env=dict(env),
            stdout=sys.stderr,
            start_new_session=True,  # a terminal's Ctrl-C reaches us; we pass one SIGTERM on
            # The command has started no thread yet: preexec_fn is safe here.
            preexec_fn=_stop_with_parent,  # noqa: PLW1509
        )

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Pass one SIGTERM on (a second signal changes nothing: the daemon is stopping)."""
        if not self.stopped and self.process.poll() is None:
            self.stopped = True
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Wait for the daemon, passing SIGTERM / SIGINT on; the exit status."""
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = self.process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.verdict(code)

    def verdict(self, code: int) -> int:
        reason = self.fatal.read_text(encoding="utf-8") if self.fatal.exists() else ""
        if reason:
            print(f"livemigrate consume --engine kcl: {reason}", file=sys.stderr)
            return ExitCode.BAD_INPUT
        if self.stopped:
            return ExitCode.OK
        print(
            f"livemigrate consume --engine kcl: the KCL daemon ended by itself with status "
            f"{code} (its log is above); checkpoints are kept.\n  fix: run the command again",
            file=sys.stderr,
        )
        return ExitCode.INCOMPLETE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=("builtin", "kcl"),
        default="builtin",
        help="builtin (default) or kcl: the Kinesis Client Library's MultiLangDaemon "
        "(Kinesis change source only; needs livemigrate[kcl] and Java 17)",
    )
    parser.add_argument(
        "--kcl-property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --engine kcl: set a MultiLangDaemon property (repeatable)",
    )


def options_for(args: argparse.Namespace, settings: Any, stream: str) -> KclOptions:
    region = (
        settings.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    )
    return KclOptions(
        application=f"livemigrate-kcl-{settings.migration_id}",
        stream=stream,
        region=region,
        executable="",
        endpoint=settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"),
        worker=args.worker_id or worker_id(),
        failover_seconds=args.lease_seconds,
        poll_interval=args.poll_interval,
        batch_size=args.batch_size,
        extra=parse_extra(args.kcl_property),
    )


def require_kinesis(settings: Any) -> str:
    """The Kinesis stream of a Kinesis change source (ConfigError otherwise)."""
    if getattr(settings, "change_source", "dynamodb-streams") != "kinesis":
        raise ConfigError(
            "consume --engine kcl reads a Kinesis change source; this migration reads the "
            "table's DynamoDB stream",
            "set LIVEMIGRATE_CHANGE_SOURCE=kinesis and LIVEMIGRATE_KINESIS_STREAM, or run "
            "`livemigrate consume` without --engine kcl",
        )
    stream = getattr(settings, "kinesis_stream", None)
    if not stream:
        raise ConfigError(
            "the change source is kinesis but no Kinesis stream is named",
            "set LIVEMIGRATE_KINESIS_STREAM to the stream's name or ARN",
        )
    return str(stream)


def run_kcl(args: argparse.Namespace, settings: Any, clients: Any) -> int:
    """The ``consume --engine kcl`` command; returns the exit status."""
    from livemigrate.migration import open_migration

    stream = require_kinesis(settings)
    if args.until_caught_up:
        raise ConfigError(
            "--until-caught-up is not available with --engine kcl (the KCL has no end)",
            "run the built-in reader (`livemigrate consume --until-caught-up`) for a bounded run",
        )
    if args.metrics_port:
        log.warning(
            "--metrics-port is served by the built-in reader only; the KCL's own "
            "metrics are set with --kcl-property metricsLevel=..."
        )
    jars = kclpy_jars()
    java = find_java()
    open_migration(settings, clients)  # every check before the daemon starts
    workdir = Path(tempfile.mkdtemp(prefix="livemigrate-kcl-"))
    options = options_for(args, settings, stream)
    props = write_workdir(options, workdir)
    fatal = workdir / "fatal.txt"
    env = {
        **os.environ,
        FATAL_ENV: str(fatal),
        "LIVEMIGRATE_MIGRATION_ID": settings.migration_id,
    }
    print(
        f"livemigrate consume --engine kcl: {stream} -> {settings.destination_table} "
        f"(KCL application {options.application}, work directory {workdir})",
        file=sys.stderr,
    )
    daemon = Daemon(daemon_command(java, jars, workdir, props), env, fatal)
    try:
        return daemon.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
