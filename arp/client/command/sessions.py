"""Agent sessions: start, follow, continue, cancel, and record them as they happen."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from arp.client.command.approvals import (
    PENDING,
    Answer,
    ApprovalBook,
    ApprovalError,
    Grant,
    Pending,
    check_answer,
    covers,
)
from arp.client.command.channels import CHANNELS, AcpChannel, Channel
from arp.client.command.executors import (
    EXECUTORS,
    PERMISSION_RANK,
    Executor,
    UnsafeSessionId,
    digest,
    executor_named,
    gemini_acp_flag,
    strip_ansi,
    valid_model,
)
from arp.client.command.process import AgentProcess, group_alive, probe_output
from arp.client.command.store import SessionStore

MAX_PROMPT = 100_000  # characters
STDERR_KEEP = 64 * 1024  # stderr bytes recorded per turn; the rest is drained and counted
STDERR_TAIL = 2000
FINAL = ("completed", "failed", "cancelled", "interrupted")
#: Seconds an agent has to exit after its turn ended and its stdin was closed; then it is
#: terminated (SIGINT, then SIGTERM and SIGKILL ``--grace`` apart).  ACP agents never exit by
#: themselves (reference/approvals.md §5), Claude and Codex do, unless they hang.
TURN_EXIT_TIMEOUT = 3.0


class ApiError(Exception):
    """A request we refuse: ``status`` and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Viewer(Protocol):
    """Something following a session's events (a WebSocket)."""

    def send_event(self, event: dict[str, Any]) -> None: ...

    def session_ended(self) -> None: ...


def now_iso(later: float = 0.0) -> str:
    """The current UTC time (plus ``later`` seconds) as ISO 8601 with milliseconds."""
    when = datetime.now(timezone.utc) + timedelta(seconds=later)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Session:
    """One agent session: its record, its events (loaded on demand) and who is watching."""

    def __init__(self, manager: SessionManager, record: dict[str, Any]) -> None:
        self.manager = manager
        self.record = record
        self._events: list[dict[str, Any]] | None = None
        self._output: list[str] = []
        self._turn_start = 0  # where the current turn's text starts in _output
        self._turn_text = False
        self.viewers: set[Viewer] = set()
        self.process: AgentProcess | None = None
        self.cancelling = False
        self.cancelled_by: dict | None = None
        self._stderr_kept = 0
        self._stderr_dropped = 0
        self._stderr_tail = b""
        self._failed = False
        self._error: str | None = None
        self._result_text: str | None = None
        self._line_buffer: list[dict] = []
        self._bad_id_warned = False
        self.channel: Channel | None = None
        self.pending: dict[str, Pending] = {}  # by approval id
        self.session_rules: list[dict[str, Any]] = []  # allowed "for this session" (approvals.covers)
        self._exit_timer: Any = None
        self._stopped_after_turn = False

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def status(self) -> str:
        return self.record["status"]

    @property
    def running(self) -> bool:
        return self.record["status"] == "running"

    # -- events -------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Every event so far (read from disk the first time)."""
        if self._events is None:
            self._events = self.manager.store.events(self.id)
            self._output = []
            self._turn_start = 0
            for event in self._events:
                self._absorb(event, replay=True)
        return self._events

    def output(self) -> str:
        """The assistant's text so far."""
        self.events()
        return "".join(self._output)

    def _absorb(self, event: dict[str, Any], replay: bool) -> None:
        kind = event.get("kind")
        if kind == "turn":
            self._turn_text = False
            self._result_text = None
            if self._output and not self._output[-1].endswith("\n"):
                self._output.append("\n")
            self._turn_start = len(self._output)
        elif kind == "agent":
            d = digest(self.record["executor"], event.get("data"))
            if d.text:
                if not d.delta and self._output and not self._output[-1].endswith("\n"):
                    self._output.append("\n")
                self._output.append(d.text)
                self._turn_text = True
            if d.result_text and not self._turn_text:
                self._result_text = d.result_text
            if not replay:
                self._learn(d)
        elif kind == "status":
            if self._result_text and not self._turn_text:
                self._output.append(self._result_text)
            self._result_text = None

    def _learn(self, d: Any) -> None:
        record = self.record
        if d.agent_session_id and not self._valid_agent_id(d.agent_session_id):
            if not self._bad_id_warned:  # once per session: the agent may repeat it on every line
                self._bad_id_warned = True
                self.manager.log.warn(
                    "session {id}: ignoring the agent's session id {sid!r}: not a {executor} session id",
                    id=self.id,
                    sid=d.agent_session_id[:80],
                    executor=record["executor"],
                )
        elif d.agent_session_id:
            record["agentSessionId"] = d.agent_session_id
            ids = record.setdefault("agentSessionIds", [])
            if d.agent_session_id not in ids:
                ids.append(d.agent_session_id)
                self.manager.store.save(record)
        if d.usage is not None:
            record["usage"] = d.usage
        if d.cost_usd is not None:
            record["costUsd"] = d.cost_usd
        if d.failed:
            self._failed = True
        if d.error:
            self._error = d.error

    def _valid_agent_id(self, session_id: object) -> bool:
        executor = self.manager.executor(self.record["executor"])
        return executor is not None and executor.valid_session_id(session_id)

    # -- the interactive channel's host ---------------------------------------------------

    @property
    def cwd(self) -> str:
        """The agent's working directory."""
        return self.record["projectPath"]

    def note_agent_session(self, session_id: object) -> None:
        """The channel learned the agent's session id (a thread or ACP session)."""
        if isinstance(session_id, str):
            from arp.client.command.executors import Digest

            self._learn(Digest(agent_session_id=session_id))

    def note_failure(self, message: str) -> None:
        """The channel saw the turn fail."""
        self._failed = True
        self._error = message[:2000]

    def turn_over(self, exits: bool) -> None:
        """The channel saw the turn end and closed the agent's stdin.

        An agent that ``exits`` by itself (Claude, Codex) ends the turn when it exits; if it is
        still there after :data:`TURN_EXIT_TIMEOUT` seconds it is terminated.  One that does not
        (an ACP agent) ends the turn now: the final ``status`` event, the session no longer
        ``running``, and the process is stopped in the background (:meth:`SessionManager.retire`).
        """
        process = self.process
        if process is None or not self.running:
            return
        if exits:
            if self._exit_timer is None:
                reactor = self.manager.reactor
                self._exit_timer = reactor.callLater(TURN_EXIT_TIMEOUT, self._overdue, process)  # type: ignore[attr-defined]
            return
        self.process = None
        self.channel = None
        self.manager.retire(process)
        self._turn_ended(None, None, exited=False)

    def _overdue(self, process: AgentProcess) -> None:
        self._exit_timer = None
        if process is self.process and not process.ended:
            self.manager.log.warn(
                "session {id}: the agent did not exit {n:g} s after its turn; stopping it",
                id=self.id,
                n=TURN_EXIT_TIMEOUT,
            )
            self._stopped_after_turn = True
            process.terminate(self.manager.grace)

    def ask(
        self,
        *,
        key: str,
        reply: Any,
        grant: Grant | None = None,
        subject: dict[str, Any] | None = None,
        summarize: Any = None,
        **fields: Any,
    ) -> str:
        """The agent asks: record an approval, show it to viewers, start its timeout.

        ``grant`` is what "allow for this session" would cover (None: not offered); ``subject`` what
        the request asks for, checked against the rules already allowed for this session;
        ``summarize(input)`` summarizes an edited input (None: the input cannot be edited).
        """
        manager = self.manager
        timeout = manager.approval_timeout
        record: dict[str, Any] = {
            "id": manager.approvals.new_id(),
            "sessionId": self.id,
            "turn": len(self.record["turns"]),
            "agent": self.record["executor"],
            "kind": fields.pop("kind", "permission"),
            "tool": fields.pop("tool", "tool"),
            "input": fields.pop("input", {}),
            "summary": fields.pop("summary", {}),
            "suggestions": fields.pop("suggestions", None) or [],
            "sessionScope": grant.words if grant is not None else None,
            "editable": summarize is not None,
            "createdAt": now_iso(),
            "deadline": now_iso(timeout),
            "status": PENDING,
            "answeredBy": None,
            "answeredAt": None,
            "key": key,
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        pending = Pending(record, reply, extra={"grant": grant, "summarize": summarize})
        self.pending[record["id"]] = pending
        manager.approvals.put(record)
        self.emit("approval", approval=record)
        if (
            record["kind"] == "permission"
            and subject is not None
            and any(covers(rule, subject) for rule in self.session_rules)
        ):
            # covered by what was allowed for this session: recorded, answered at once (for this
            # request only: nothing wider is granted), nobody is nudged
            self._resolve(pending, Answer("allowed"), {"rule": "allowed for this session"})
        else:
            manager.announce("approval", self, record)
            pending.timer = manager.reactor.callLater(timeout, self._expire, record["id"])  # type: ignore[attr-defined]
        return record["id"]

    def _expire(self, approval_id: str) -> None:
        pending = self.pending.get(approval_id)
        if pending is not None:
            minutes = self.manager.approval_timeout / 60
            message = f"No answer from the user within {minutes:g} minutes, so this was denied."
            self._resolve(pending, Answer("expired", message=message), {"rule": "approval timeout"})

    def withdraw(self, key: str, why: str) -> None:
        """The agent no longer waits for the approval it asked as ``key``."""
        for pending in list(self.pending.values()):
            if pending.record["key"] == key:
                self._resolve(pending, Answer("cancelled", message="withdrawn"), {"rule": why})

    def cancel_approvals(self, why: str, tell_agent: bool) -> None:
        """Cancel every pending approval (the session was cancelled, or its agent ended)."""
        for pending in list(self.pending.values()):
            answer = Answer("cancelled", message=why if tell_agent else "withdrawn")
            self._resolve(pending, answer, {"rule": why})

    def answer(
        self, approval_id: str, body: object, by: dict | None, may_edit: bool = False
    ) -> dict[str, Any]:
        """A person answers: validate, tell the agent, record who and when (409 if not pending).

        ``may_edit``: the answer may change the tool input (``updatedInput``: the token has the
        ``prompt`` scope too); the record then shows the input that runs, and ``originalInput``.
        """
        pending = self.pending.get(approval_id)
        if pending is None:
            record = self.manager.approvals.records.get(approval_id)
            if record is None or record.get("sessionId") != self.id:
                raise ApprovalError(404, f"no approval {approval_id!r} in this session")
            raise ApprovalError(409, f"the approval is {record['status']}, no longer pending")
        answer = check_answer(pending.record, body, may_edit)
        if answer.updated_input is not None:
            record = pending.record
            ran = {**record["input"], **answer.updated_input}
            record["originalInput"], record["input"] = record["input"], ran
            summarize = pending.extra.get("summarize")
            if summarize is not None:
                record["summary"] = summarize(ran)
            answer.updated_input = ran
        return self._resolve(pending, answer, by)

    def _resolve(self, pending: Pending, answer: Answer, by: dict | None) -> dict[str, Any]:
        record = pending.record
        self.pending.pop(record["id"], None)
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        record["status"] = answer.status
        record["answeredBy"] = by
        record["answeredAt"] = now_iso()
        record["decision"] = {
            "message": answer.message if answer.message != "withdrawn" else None,
            "scope": answer.scope,
            "answers": answer.answers,
            "updatedInput": answer.updated_input,
        }
        grant = pending.extra.get("grant")
        if answer.allowed and answer.scope == "session" and grant is not None:
            self.session_rules.extend(grant.rules)
        try:
            pending.reply(answer)
        except Exception:
            self.manager.log.failure("session {id}: could not pass an answer to the agent", id=self.id)
        self.manager.approvals.put(record)
        self.emit("approval_resolved", approval=record)
        if by != {"rule": "allowed for this session"}:
            self.manager.announce("approval_resolved", self, record)
        return record

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Record a new event, then pass it to every viewer."""
        events = self.events()
        self.record["lastSeq"] += 1
        event = {"seq": self.record["lastSeq"], "time": now_iso(), "turn": len(self.record["turns"])}
        event["kind"] = kind
        event.update(fields)
        self.manager.store.append(self.id, event)
        events.append(event)
        self._absorb(event, replay=False)
        for viewer in list(self.viewers):
            viewer.send_event(event)
        return event

    def events_since(self, since: int) -> list[dict[str, Any]]:
        """The events with a sequence number above ``since``."""
        events = self.events()
        if since <= 0:
            return list(events)
        # sequence numbers are 1..n in order, so the index is direct unless a log was damaged
        if len(events) >= since and events[since - 1].get("seq") == since:
            return events[since:]
        return [e for e in events if e["seq"] > since]

    # -- views --------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The session's record as the API shows it."""
        r = self.record
        keys = (
            "id",
            "executor",
            "model",
            "prompt",
            "projectPath",
            "permissionMode",
            "status",
            "createdAt",
            "createdBy",
            "updatedAt",
            "exitCode",
            "agentSessionId",
            "agentSessionIds",
            "error",
            "usage",
            "costUsd",
            "lastSeq",
            "resumedFrom",
        )
        view = {k: r.get(k) for k in keys}
        view["turns"] = len(r["turns"])
        view["lastMessage"] = self.last_message() if self._events is not None else r.get("lastMessage")
        view["pendingApprovals"] = len(self.pending)
        return view

    def last_message(self) -> str | None:
        """The end of the agent's text so far, on one line (the Sessions list shows it)."""
        self.events()
        text = "".join(self._output[self._turn_start :]).rstrip()[-2000:]
        if not text.strip():
            return None
        last = [p for p in text.split("\n\n") if p.strip()][-1]
        last = " ".join(last.split())
        return last if len(last) <= 200 else "…" + last[-199:]

    def detail(self, since: int = 0) -> dict[str, Any]:
        """The summary plus turns, events (after ``since``) and the text output."""
        view = self.summary()
        view["turns"] = self.record["turns"]
        view["events"] = self.events_since(since)
        view["output"] = self.output()
        return view

    # -- running ------------------------------------------------------------------------

    def start_turn(
        self, executor: Executor, binary: str, prompt: str, resume: str | None, by: dict | None = None
    ) -> None:
        """Spawn the agent for one turn; ``by`` is the access token that asked (audit).

        ``resume`` must be a valid agent session id (see :meth:`Executor.argv`).
        """
        record = self.record
        manager = self.manager
        interactive = manager.mode(executor) == "interactive"
        if interactive:
            mode = record["permissionMode"]
            flag = manager.acp_flag(executor, binary)
            argv = executor.interactive_argv(binary, record.get("model"), mode, resume, acp_flag=flag)
        else:
            argv = executor.argv(binary, prompt, record.get("model"), record["permissionMode"], resume)
        record["turns"].append({"prompt": prompt, "startedAt": now_iso(), "resume": resume, "by": by})
        record["status"] = "running"
        record["exitCode"] = None
        record["error"] = None
        record["updatedAt"] = now_iso()
        self.cancelling = False
        self._stopped_after_turn = False
        self._failed = False
        self._error = None
        self._stderr_kept = self._stderr_dropped = 0
        self._stderr_tail = b""
        mode = "interactive" if interactive else "oneshot"
        self.emit("turn", prompt=prompt, resume=resume, argv=argv[1:], by=by, mode=mode)
        process = AgentProcess(manager.reactor, self._line, self._stderr, self._exited)
        env = executor.environment(manager.environ)
        try:
            process.spawn(manager.reactor, argv, env, record["projectPath"], keep_stdin=interactive)
        except OSError as e:
            self._finish("failed", None, f"could not start {binary}: {e}")
            return
        self.process = process
        if interactive:
            options = {
                "model": record.get("model"),
                "rank": PERMISSION_RANK[record["permissionMode"]],
                "mode": record["permissionMode"],
                "version": manager.version,
            }
            self.channel = CHANNELS[executor.protocol](self, process, prompt, resume, options)
            self.channel.start()
        record["pid"] = process.pid
        manager.store.save(record)
        manager.log.info(
            "session {id}: started {executor} (pid {pid}) in {path}",
            id=self.id,
            executor=executor.name,
            pid=process.pid,
            path=record["projectPath"],
        )

    def _line(self, raw: bytes) -> None:
        text = strip_ansi(raw.decode("utf-8", "replace")).strip()
        if not text:
            return
        try:
            obj = json.loads(text)
        except ValueError:
            self.emit("raw", text=text)
            return
        if self.channel is not None and self.channel.handle(obj):
            return
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind is None and isinstance(obj, dict) and isinstance(obj.get("method"), str):
            kind = obj["method"]
        self.emit("agent", type=kind if isinstance(kind, str) else None, data=obj)

    def _stderr(self, data: bytes) -> None:
        self._stderr_tail = (self._stderr_tail + data)[-STDERR_TAIL:]
        room = STDERR_KEEP - self._stderr_kept
        if room <= 0:
            self._stderr_dropped += len(data)
            return
        kept = data[:room]
        self._stderr_kept += len(kept)
        self._stderr_dropped += len(data) - len(kept)
        self.emit("stderr", text=strip_ansi(kept.decode("utf-8", "replace")))

    def _exited(self, code: int | None, sig: int | None) -> None:
        if self._exit_timer is not None and self._exit_timer.active():
            self._exit_timer.cancel()
        self._exit_timer = None
        self.process = None
        self.channel = None
        self._turn_ended(code, sig, exited=not self._stopped_after_turn)

    def _turn_ended(self, code: int | None, sig: int | None, exited: bool) -> None:
        """Record the turn's end: ``exited`` if the agent's exit ended it (its exit code counts),
        else its channel said the turn was over."""
        self.cancel_approvals("the agent ended" if exited else "the turn ended", tell_agent=False)
        if self._stderr_dropped:
            self.emit("stderr", text=f"[{self._stderr_dropped} more bytes of stderr not recorded]")
        if self.cancelling:
            status, why = "cancelled", "cancelled by request"
        elif self.manager.stopping:
            status, why = "interrupted", "arpc stopped while the agent was running"
        elif self._failed or (exited and code != 0):
            status = "failed"
            tail = self._stderr_tail.decode("utf-8", "replace").strip()
            why = self._error or (tail.splitlines()[-1] if tail else None)
            if why is None:
                why = f"exit code {code}" if code is not None else f"killed by signal {sig}"
        else:
            status, why = "completed", None
        self._finish(status, code, why, self.cancelled_by if self.cancelling else None)

    def _finish(self, status: str, code: int | None, why: str | None, by: dict | None = None) -> None:
        record = self.record
        record["status"] = status
        record["exitCode"] = code
        record["error"] = why
        record["updatedAt"] = now_iso()
        record.pop("pid", None)
        record["lastMessage"] = self.last_message()
        if record["turns"]:
            record["turns"][-1].update(endedAt=record["updatedAt"], status=status, exitCode=code)
        self.emit("status", status=status, exitCode=code, error=why, **({"by": by} if by else {}))
        self.manager.store.save(record)
        self.manager.store.close_events(self.id)
        self.manager.log.info("session {id}: {status}", id=self.id, status=status)
        self.manager.announce("session_finished", self, None)
        for viewer in list(self.viewers):
            viewer.session_ended()


class SessionManager(Service):
    """All agent sessions of this arpc: creates, continues, cancels and lists them."""

    log = Logger()

    def __init__(
        self,
        *,
        store: SessionStore,
        reactor: object,
        binaries: dict[str, str | None],
        project_roots: Iterable[str | os.PathLike],
        permission_mode: str = "acceptEdits",
        max_permission_mode: str | None = None,
        max_sessions: int = 4,
        claude_roots: Iterable[Path] = (),
        grace: float = 2.0,
        environ: dict[str, str] | None = None,
        approval_timeout: float = 1800.0,
        oneshot: Iterable[str] = (),
        acp_agents: Iterable[Executor] = (),
        version: str = "0",
    ) -> None:
        self.executors: dict[str, Executor] = dict(EXECUTORS)
        for agent in acp_agents:
            self.executors[agent.name] = agent
        self.oneshot = {executor_named(n).name if executor_named(n) else n for n in oneshot}
        self.approval_timeout = approval_timeout
        self.version = version
        self.listeners: list[Any] = []  # called with (event, session, approval record or None)
        #: The agents' own history readers by executor name (``"resume"`` looks sessions up there).
        self.histories: dict[str, Any] = {}
        self.approvals = ApprovalBook(Path(store.directory) / "approvals.json")
        self.store = store
        self.reactor = reactor
        self.binaries = binaries
        self.project_roots = [Path(os.path.realpath(os.path.expanduser(p))) for p in project_roots]
        self.permission_mode = permission_mode
        self.max_permission_mode = max_permission_mode or permission_mode
        self.max_sessions = max_sessions
        self.claude_roots = list(claude_roots)
        self.grace = grace
        self.environ = dict(os.environ if environ is None else environ)
        self.sessions: dict[str, Session] = {}
        self.retiring: set[AgentProcess] = set()  # agents of finished turns, being stopped
        self._acp_flags: dict[tuple, Any] = {}  # Gemini binary -> its ACP flag (or the Deferred)
        self.stopping = False
        self._load()

    def startService(self) -> None:
        super().startService()
        gemini = self.executors.get("Gemini")
        binary = gemini.resolve(self.binaries.get("Gemini")) if gemini is not None else None
        if gemini is not None and binary is not None and self.mode(gemini) == "interactive":
            self.detect_acp_flag(gemini, binary)

    def _binary_key(self, binary: str) -> tuple[str, int, int] | None:
        try:
            st = os.stat(binary)
        except OSError:
            return None
        return (binary, st.st_mtime_ns, st.st_size)

    def detect_acp_flag(self, executor: Executor, binary: str) -> Deferred[str]:
        """Ask Gemini's ``binary --version`` (once per binary file: again when it is replaced)
        which ACP flag it takes; fires with the flag."""
        key = self._binary_key(binary)
        if key is None:
            return succeed("--experimental-acp")
        known = self._acp_flags.get(key)
        if isinstance(known, str):
            return succeed(known)
        if known is None:
            env = executor.environment(self.environ)
            probe = probe_output(self.reactor, [binary, "--version"], env)

            def learned(output: bytes | None) -> str:
                flag = gemini_acp_flag(output)
                self._acp_flags[key] = flag
                self.log.info("{binary} --version: {out!r}, so it runs with {flag}", binary=binary,
                              out=(output or b"").strip()[:80], flag=flag)  # fmt: skip
                return flag

            probe.addCallback(learned)
            self._acp_flags[key] = probe
            known = probe
        waiting: Deferred[str] = Deferred()
        known.addCallback(lambda flag: (waiting.callback(flag), flag)[1])
        return waiting

    def acp_flag(self, executor: Executor, binary: str) -> str:
        """Gemini's ACP flag for ``binary``: ``--acp`` from 0.61 on, else (and until its version
        is known: the first check runs when arpc starts) ``--experimental-acp``."""
        if executor.name != "Gemini":
            return "--experimental-acp"
        key = self._binary_key(binary)
        known = self._acp_flags.get(key) if key is not None else None
        if isinstance(known, str):
            return known
        if known is None:
            self.detect_acp_flag(executor, binary)
        return "--experimental-acp"

    def executor(self, name: object) -> Executor | None:
        """The executor for an API name: a built-in one (aliases too) or an ``--acp-agent``."""
        if isinstance(name, str) and name in self.executors:
            return self.executors[name]
        found = executor_named(name)
        return self.executors.get(found.name) if found else None

    def mode(self, executor: Executor) -> str:
        """``interactive`` (the agent can ask) or ``oneshot`` (``--oneshot-agent``: it cannot)."""
        return "oneshot" if executor.name in self.oneshot and executor.oneshot else "interactive"

    def announce(self, event: str, session: Session, approval: dict | None) -> None:
        """Tell the listeners (webhooks, waiting approval lists) about an approval or a finished session."""
        for listener in list(self.listeners):
            try:
                listener(event, session, approval)
            except Exception:
                self.log.failure("a listener failed on {event}", event=event)

    def approval_listing(self, status: str | None = None) -> list[dict[str, Any]]:
        """Approval records, oldest first, as the API shows them."""
        return [{k: v for k, v in r.items() if k != "key"} for r in self.approvals.listing(status)]

    def _cancel_stale_approvals(self) -> None:
        """Approvals pending before a restart: their agents are gone, so they are cancelled."""
        changed = False
        for record in self.approvals.listing(PENDING):
            record.update(status="cancelled", answeredAt=now_iso(), answeredBy={"rule": "arpc restarted"})
            changed = True
            session = self.sessions.get(record.get("sessionId", ""))
            if session is not None:
                session.emit("approval_resolved", approval=record)
                if not session.running:
                    self.store.close_events(session.id)
        if changed:
            self.approvals.save()

    def _load(self) -> None:
        self._load_sessions()
        for session in self.sessions.values():
            if session.running:  # the record is saved at status changes; the log knows the last seq
                events = session.events()
                if events:
                    session.record["lastSeq"] = max(session.record["lastSeq"], events[-1]["seq"])
        self._cancel_stale_approvals()
        for session in list(self.sessions.values()):
            if session.running:
                pid = session.record.get("pid")
                if isinstance(pid, int) and group_alive(pid):
                    self.log.warn(
                        "session {id}: its agent (process group {pid}) from before the restart may still "
                        "be running; it is not ours any more",
                        id=session.id,
                        pid=pid,
                    )
                session._finish("interrupted", None, "arpc stopped while the agent was running")
        if self.sessions:
            self.log.info("loaded {n} sessions", n=len(self.sessions))

    def _load_sessions(self) -> None:
        for record in self.store.load_all():
            if not all(k in record for k in ("executor", "status", "turns", "lastSeq", "createdAt")):
                continue
            self.sessions[record["id"]] = Session(self, record)

    # -- queries ------------------------------------------------------------------------

    def running_count(self) -> int:
        """How many sessions have an agent running now."""
        return sum(1 for s in self.sessions.values() if s.running)

    def get(self, session_id: str) -> Session:
        """The session with ``session_id``, or a 404 ApiError."""
        session = self.sessions.get(session_id)
        if session is None:
            raise ApiError(404, f"no session {session_id!r}")
        return session

    def listing(self, offset: int = 0, limit: int = 50, status: str | None = None) -> dict[str, Any]:
        """Sessions, newest first."""
        sessions = sorted(self.sessions.values(), key=lambda s: s.record["createdAt"], reverse=True)
        if status:
            sessions = [s for s in sessions if s.status == status]
        page = sessions[offset : offset + limit]
        return {
            "sessions": [s.summary() for s in page],
            "total": len(sessions),
            "offset": offset,
            "limit": limit,
        }

    # -- validation ---------------------------------------------------------------------

    def _prompt(self, body: dict[str, Any]) -> str:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(400, "prompt is required: a non-empty string")
        if len(prompt) > MAX_PROMPT:
            raise ApiError(400, f"prompt is too long: at most {MAX_PROMPT} characters")
        if "\x00" in prompt:
            raise ApiError(400, "prompt must not contain NUL characters")
        return prompt

    def _model(self, body: dict[str, Any], default: str | None = None) -> str | None:
        model = body.get("model", default)
        if model in (None, ""):
            return None
        if not isinstance(model, str) or not valid_model(model):
            raise ApiError(400, "model must be a model name or alias like 'sonnet' or 'gpt-5-codex'")
        return model

    def _project_path(self, body: dict[str, Any]) -> str:
        path = body.get("projectPath", body.get("project_path"))
        if not isinstance(path, str) or not path:
            raise ApiError(400, "projectPath is required: an absolute directory path")
        if "\x00" in path or not os.path.isabs(os.path.expanduser(path)):
            raise ApiError(400, "projectPath must be an absolute path")
        real = Path(os.path.realpath(os.path.expanduser(path)))
        if not real.is_dir():
            raise ApiError(400, f"projectPath {path!r} is not an existing directory")
        if not self._under_roots(real):
            roots = ", ".join(str(r) for r in self.project_roots)
            raise ApiError(400, f"projectPath {path!r} is outside the allowed --project-root ({roots})")
        return str(real)

    def _permission(self, body: dict[str, Any]) -> str:
        from arp.client.command.executors import permission_mode

        mode = body.get("permissionMode", body.get("permission_mode"))
        if mode in (None, ""):
            return self.permission_mode
        try:
            mode = permission_mode(mode) if isinstance(mode, str) else None
        except ValueError:
            mode = None
        if mode is None:
            raise ApiError(400, "permissionMode must be one of " + ", ".join(PERMISSION_RANK))
        if PERMISSION_RANK[mode] > PERMISSION_RANK[self.max_permission_mode]:
            limit = self.max_permission_mode
            raise ApiError(403, f"permissionMode {mode} is above this arpc's --max-permission-mode {limit}")
        return mode

    def _binary(self, executor: Executor) -> str:
        binary = executor.resolve(self.binaries.get(executor.name))
        if binary is None:
            configured = self.binaries.get(executor.name) or executor.default_binary
            raise ApiError(
                503,
                f"the {executor.name} CLI was not found ({configured!r}): install it or start arpc "
                f"with {executor.flag} /path/to/{executor.default_binary}",
            )
        return binary

    def _capacity(self) -> None:
        if self.stopping:
            raise ApiError(503, "arpc is shutting down")
        if self.running_count() >= self.max_sessions:
            raise ApiError(429, f"{self.max_sessions} sessions are running already (--max-sessions)")

    # -- actions ------------------------------------------------------------------------

    def create(self, body: object, actor: dict | None = None) -> Session:
        """Validate a new-session request and start the agent."""
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        resumed = None
        if body.get("resume") is not None:
            executor, resumed = self._resumable(body)
            prompt = self._prompt(body)
            project = resumed.pop("path")
        else:
            executor = self.executor(body.get("executor", "Claude"))
            if executor is None:
                raise ApiError(400, "unknown executor: use " + ", ".join(self.executors))
            prompt = self._prompt(body)
            project = self._project_path(body)
        model = self._model(body)
        mode = self._permission(body)
        binary = self._binary(executor)
        self._capacity()
        now = now_iso()
        record = {
            "id": uuid.uuid4().hex,
            "executor": executor.name,
            "model": model,
            "prompt": prompt,
            "projectPath": project,
            "permissionMode": mode,
            "status": "running",
            "createdAt": now,
            "updatedAt": now,
            "exitCode": None,
            "agentSessionId": None,
            "agentSessionIds": [],
            "error": None,
            "usage": None,
            "costUsd": None,
            "lastSeq": 0,
            "turns": [],
            "createdBy": actor,
        }
        resume = None
        if resumed is not None:
            resume = resumed["id"]
            record.update(agentSessionId=resume, agentSessionIds=[resume], resumedFrom=resumed)
        session = Session(self, record)
        session._events = []
        self.sessions[record["id"]] = session
        session.start_turn(executor, binary, prompt, resume, actor)
        self._note_git_base(session)
        return session

    def _resumable(self, body: dict[str, Any]) -> tuple[Executor, dict[str, Any]]:
        """The executor and history record of ``"resume"``: the agent's session id as its history
        lists it (404 if no history knows it, 403 if it ran outside ``--project-root``)."""
        sid = body["resume"]
        if not isinstance(sid, str) or not sid or len(sid) > 200:
            raise ApiError(400, "resume must be the agent's session id, as its history lists it")
        if "executor" in body:
            named = self.executor(body.get("executor"))
            if named is None:
                raise ApiError(400, "unknown executor: use " + ", ".join(self.executors))
            candidates = [named]
        else:
            candidates = [self.executors[n] for n in ("Claude", "Codex", "Gemini") if n in self.executors]
        for executor in candidates:
            reader = self.histories.get(executor.name)
            info = reader.locate(sid) if reader is not None and executor.valid_session_id(sid) else None
            if info is not None:
                break
        else:
            names = " or ".join(e.name for e in candidates)
            if len(candidates) == 1 and self.histories.get(candidates[0].name) is None:
                raise ApiError(404, f"{names} sessions cannot be continued here: arpc reads no history of it")
            raise ApiError(404, f"no {names} session {sid[:80]!r} in this machine's history")
        recorded = info.get("projectPath")
        if not isinstance(recorded, str) or not os.path.isabs(recorded) or "\x00" in recorded:
            raise ApiError(409, "the agent's history does not say which directory the session ran in")
        real = Path(os.path.realpath(recorded))
        if not self._under_roots(real):
            roots = ", ".join(str(r) for r in self.project_roots)
            raise ApiError(403, f"the session ran in {recorded!r}, outside --project-root ({roots})")
        if not real.is_dir():
            raise ApiError(409, f"the session's directory {recorded!r} no longer exists")
        given = body.get("projectPath", body.get("project_path"))
        if given not in (None, "") and (
            not isinstance(given, str) or os.path.realpath(os.path.expanduser(given)) != str(real)
        ):
            raise ApiError(400, f"projectPath: that session ran in {recorded!r}; leave projectPath out")
        found = {"executor": executor.name, "id": info["id"], "title": info.get("title"), "path": str(real)}
        return executor, found

    def git_ceiling(self, path: str) -> str | None:
        """The directory above the ``--project-root`` that holds ``path``: git looks for the
        project's repository no higher than that root."""
        real = Path(path)
        for root in self.project_roots:
            if real == root or root in real.parents:
                return str(root.parent)
        return None

    def _note_git_base(self, session: Session) -> None:
        """Remember the commit the project was at when the session started (``/changes`` diffs from it)."""
        if not hasattr(self.reactor, "spawnProcess"):
            return
        from twisted.internet.defer import ensureDeferred

        from arp.client.command.changes import git_head

        def noted(commit: str | None) -> None:
            if commit and not session.record.get("gitBase"):
                session.record["gitBase"] = commit
                self.store.save(session.record)

        try:
            d = ensureDeferred(git_head(self.reactor, session.cwd, self.git_ceiling(session.cwd)))
        except Exception:
            return
        d.addCallbacks(noted, lambda f: self.log.debug("no git base for {id}: {f}", id=session.id, f=f))

    def follow_up(self, session_id: str, body: object, actor: dict | None = None) -> Session:
        """Continue a finished session's agent conversation with a new prompt."""
        session = self.get(session_id)
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        prompt = self._prompt(body)
        if session.running:
            raise ApiError(409, "the session is still running: wait for it to end or cancel it")
        resume = self._resume_id(session)
        if resume is None:
            raise ApiError(409, "the agent never reported a valid session id, so it cannot be continued")
        model = self._model(body) if "model" in body else session.record.get("model")
        self._recheck_project(session.record["projectPath"])
        executor = self.executor(session.record["executor"])
        if executor is None:
            raise ApiError(409, f"the agent {session.record['executor']} is not configured any more")
        binary = self._binary(executor)
        self._capacity()
        session.record["model"] = model
        try:
            session.start_turn(executor, binary, prompt, resume, actor)
        except UnsafeSessionId as e:  # _resume_id only offers valid ids; this is the last guard
            raise ApiError(409, str(e))
        return session

    def _recheck_project(self, path: str) -> None:
        """Refuse a turn whose project directory is gone, or now resolves elsewhere (a directory
        swapped for a symlink), or is no longer under ``--project-root`` (the agent's own start
        checks it once more, race-free: see :data:`~arp.client.command.process.SETSID_EXEC`)."""
        real = os.path.realpath(path)
        if not os.path.isdir(real):
            raise ApiError(409, "the session's projectPath no longer exists")
        if real != path:
            raise ApiError(
                409, f"the session's projectPath {path!r} now resolves to {real!r}: start a new session"
            )
        if not self._under_roots(Path(real)):
            raise ApiError(409, f"the session's projectPath {path!r} is no longer under --project-root")

    def _under_roots(self, real: Path) -> bool:
        return any(real == root or root in real.parents for root in self.project_roots)

    def _resume_id(self, session: Session) -> str | None:
        # records written before ids were validated may hold anything: offer only well-formed ids
        ids = [i for i in session.record.get("agentSessionIds") or [] if session._valid_agent_id(i)]
        if not ids:
            return None
        if session.record["executor"] == "Claude" and len(ids) > 1:
            # Claude versions differ on which id a resumed run reports: take the newest that has a
            # transcript on disk (agents.md 1.3), else the newest.
            for candidate in reversed(ids):
                for root in self.claude_roots:
                    if any((root / "projects").glob(f"*/{candidate}.jsonl")):
                        return candidate
        return ids[-1]

    def cancel(self, session: Session, actor: dict | None = None) -> Deferred[Session]:
        """End a running session's agent and every process it started (``actor``: who asked)."""
        process = session.process
        if not session.running or process is None:
            return succeed(session)
        session.cancelling = True
        session.cancelled_by = actor
        self.log.info("session {id}: cancelling", id=session.id)
        session.cancel_approvals("the session was cancelled", tell_agent=True)
        if isinstance(session.channel, AcpChannel):
            session.channel.cancel()
        d = process.terminate(self.grace)
        d.addCallback(lambda _: session)
        return d

    def retire(self, process: AgentProcess) -> None:
        """Stop the agent of a turn that is over (its stdin is closed already): what it prints
        now is dropped; unless it exits within :data:`TURN_EXIT_TIMEOUT` seconds it is terminated."""
        self.retiring.add(process)

        def stop() -> None:
            if not process.ended:
                process.terminate(self.grace)

        call = self.reactor.callLater(TURN_EXIT_TIMEOUT, stop)  # type: ignore[attr-defined]

        def ended(code: int | None, sig: int | None) -> None:
            self.retiring.discard(process)
            if call.active():
                call.cancel()

        process.on_line = lambda line: None
        process.on_stderr = lambda data: None
        process.on_end = ended

    def delete(self, session: Session) -> None:
        """Forget a finished session (the agent's own history files are left alone)."""
        if session.running:
            raise ApiError(409, "the session is running: cancel it first")
        for viewer in list(session.viewers):
            viewer.session_ended()
        self.store.delete(session.id)
        self.sessions.pop(session.id, None)
        self.approvals.drop_session(session.id)

    def stopService(self) -> Deferred:
        """Stop every running agent (recorded as interrupted) before arpc exits."""
        super().stopService()
        self.stopping = True
        processes = [s.process for s in self.sessions.values() if s.process] + list(self.retiring)
        waits = [p.terminate(min(self.grace, 1.0)) for p in processes]
        d = DeferredList(waits)
        d.addBoth(lambda _: self.store.close())
        return d
