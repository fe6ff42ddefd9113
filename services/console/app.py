"""The console's pages: Studies, Runs (live), Results and Audit, rendered on the server.

Each handler asks the org's gateway (services/console/gateway.py) and renders what it
returns; nothing is stored here. Actions are HTML form POSTs (the CSRF check runs in
services/console/security.py before any handler) answered with a redirect. The run page
follows WatchRun through server-sent events that carry re-rendered HTML, which htmx
swaps in (the only script on the pages, served from /static).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import grpc
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from riskmesh.v1 import common_pb2, gateway_pb2
from services.console import charts
from services.console.board import STEPS, Board, phase_label, run_state_label
from services.console.gateway import ConsoleGateway, GatewayError
from services.console.security import CSRF_FIELD, AuthSettings, ConsoleSecurity, Sessions
from services.study.disclosure import LEAKAGE_NOTICE, column_owners, model_summary

log = logging.getLogger("riskmesh.console")

HERE = Path(__file__).resolve().parent
MAX_SPEC_BYTES = 256 * 1024
AUDIT_PAGE = 100
SSE_COALESCE_S = 0.2
# Fields of a StudySpec the study page lays out itself; anything else (terms newer than this
# console) is listed under "Further terms" as the gateway returned it.
KNOWN_SPEC_FIELDS = {
    "study_id",
    "title",
    "parties",
    "owners",
    "model",
    "min_intersection",
    "reveal",
    "paillier_bits",
    "run_policy",
}
STATUS_OF_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Messages after an action's redirect (chosen by key: no text from the URL is shown).
NOTICES = {
    "proposed": "Study proposed. Your proposal counts as your approval of this digest.",
    "approved": "Approved: your organisation's approval of this exact digest is recorded at every party.",
    "acknowledged": "Acknowledged: the helper's acknowledgement of this exact digest is recorded at every party.",
    "cancelled": "Cancel requested at every party.",
}


def study_state_label(state: int) -> str:
    return (
        common_pb2.StudyState.Name(state).removeprefix("STUDY_STATE_").lower()
        if state in common_pb2.StudyState.values()
        else "unknown"
    )


def role_label(role: int) -> str:
    return {common_pb2.ROLE_DATA_OWNER: "data owner", common_pb2.ROLE_HELPER: "helper"}.get(role, "unknown")


class Console:
    """The pages of one organisation's console."""

    def __init__(self, gateway: ConsoleGateway, auth: AuthSettings) -> None:
        self.gateway = gateway
        self.auth = auth
        self.sessions = Sessions()
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.globals.update(
            org=gateway.org,
            role=gateway.role,
            is_owner=gateway.role == "data_owner",
            csrf_field=CSRF_FIELD,
            auth_mode=auth.mode,
            steps=STEPS,
        )
        env.filters.update(
            study_state=study_state_label,
            run_state=run_state_label,
            phase=phase_label,
            role_name=role_label,
            short=lambda digest: digest[:12],
        )

    # Plumbing ---------------------------------------------------------------------

    def page(self, request: Request, name: str, status: int = 200, **context) -> Response:
        session = request.scope.get("state", {}).get("session")
        context.update(
            csrf_token=session.csrf if session else "", user=session.user if session else "", path=request.url.path
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def login_page(self, request: Request, error: str, status: int) -> Response:
        return self.page(request, "login.html", status, error=error, next=request.query_params.get("next", "/"))

    def refusal(
        self, request: Request, error: GatewayError, what: str, back: str = "", back_label: str = ""
    ) -> Response:
        status = STATUS_OF_CODE.get(error.code, 502)
        stale = error.code == grpc.StatusCode.FAILED_PRECONDITION and "changed" in error.message
        return self.page(
            request,
            "error.html",
            status,
            what=what,
            code=error.code.name,
            message=error.message,
            stale=stale,
            back=back,
            back_label=back_label or "Back",
        )

    def app(self) -> Starlette:
        routes = [
            Route("/healthz", self.healthz),
            Route("/", lambda request: RedirectResponse("/studies", status_code=303)),
            Route("/studies", self.studies, methods=["GET"]),
            Route("/studies", self.propose, methods=["POST"]),
            Route("/studies/{study_id}", self.study, methods=["GET"]),
            Route("/studies/{study_id}/approve", self.approve, methods=["POST"]),
            Route("/studies/{study_id}/runs", self.start_run, methods=["POST"]),
            Route("/runs", self.runs, methods=["GET"]),
            Route("/runs/{run_id}", self.run, methods=["GET"]),
            Route("/runs/{run_id}/events", self.run_events, methods=["GET"]),
            Route("/runs/{run_id}/cancel", self.cancel, methods=["POST"]),
            Route("/runs/{run_id}/result", self.result, methods=["GET"]),
            Route("/audit", self.audit, methods=["GET"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self.gateway.open()
            yield
            await self.gateway.close()

        return Starlette(routes=routes, lifespan=lifespan)

    def asgi(self):
        """The app wrapped in the console's security middleware."""
        return ConsoleSecurity(self.app(), self.auth, self.sessions, self.login_page)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    # Studies --------------------------------------------------------------------

    async def studies(self, request: Request) -> Response:
        try:
            studies = await self.gateway.studies()
        except GatewayError as exc:
            return self.refusal(request, exc, "list the studies")
        return self.page(
            request, "studies.html", studies=studies, notice=NOTICES.get(request.query_params.get("done", ""))
        )

    async def propose(self, request: Request) -> Response:
        form = await request.form()
        upload, source = form.get("spec"), str(form.get("source_path") or "").strip()
        text = (await upload.read(MAX_SPEC_BYTES + 1)) if upload is not None and not isinstance(upload, str) else b""
        problem = ""
        spec = common_pb2.StudySpec()
        if not text:
            problem = "Choose a study spec file (protobuf JSON, riskmesh.v1.StudySpec)."
        elif len(text) > MAX_SPEC_BYTES:
            problem = f"The spec file is larger than {MAX_SPEC_BYTES // 1024} KiB."
        else:
            try:
                json_format.Parse(text.decode("utf-8"), spec)
            except (UnicodeDecodeError, json_format.ParseError) as exc:
                problem = f"The file is not a study spec in protobuf JSON: {exc}"
        if not problem and not source:
            problem = "Give the path of your organisation's CSV file for this study (it stays here)."
        if problem:
            studies = await self.gateway.studies()
            return self.page(request, "studies.html", 400, studies=studies, problem=problem)
        try:
            study = await self.gateway.propose(spec, source)
        except GatewayError as exc:
            return self.refusal(request, exc, "propose the study")
        log.info("study %s proposed by %s", study.spec.study_id, request.scope["state"]["session"].user)
        return RedirectResponse(f"/studies/{quote(study.spec.study_id)}?done=proposed", status_code=303)

    async def study(self, request: Request) -> Response:
        study_id = request.path_params["study_id"]
        try:
            study = await self.gateway.study(study_id)
            runs = await self.gateway.runs(study_id)
        except GatewayError as exc:
            return self.refusal(request, exc, f"show study {study_id}")
        spec = study.spec
        further = {
            k: v
            for k, v in json_format.MessageToDict(spec, preserving_proto_field_name=True).items()
            if k not in KNOWN_SPEC_FIELDS
        }
        my_role = next((p.role for p in spec.parties if p.org == self.gateway.org), common_pb2.ROLE_UNSPECIFIED)
        roles = {p.org: "helper" if p.role == common_pb2.ROLE_HELPER else "data owner" for p in spec.parties}
        return self.page(
            request,
            "study.html",
            study=study,
            spec=spec,
            runs=runs,
            disclosures=[(d.org, roles.get(d.org, ""), list(d.items)) for d in study.disclosures],
            policy=spec.run_policy,
            approval=common_pb2.RunApproval.Name(spec.run_policy.run_approval),
            leakage=LEAKAGE_NOTICE,
            model=model_summary(spec),
            further=json.dumps(further, indent=2, sort_keys=True) if further else "",
            my_role=my_role,
            approved_here=self.gateway.org in study.approved_by,
            notice=NOTICES.get(request.query_params.get("done", "")),
        )

    async def approve(self, request: Request) -> Response:
        study_id = request.path_params["study_id"]
        form = await request.form()
        digest, source = str(form.get("spec_digest") or ""), str(form.get("source_path") or "").strip()
        try:
            study = await self.gateway.approve(study_id, digest, source)
        except GatewayError as exc:
            return self.refusal(
                request,
                exc,
                f"approve study {study_id}",
                back=f"/studies/{quote(study_id)}",
                back_label="Review the current spec",
            )
        log.info("study %s digest %s approved by %s", study_id, digest[:12], request.scope["state"]["session"].user)
        done = "acknowledged" if self.gateway.role == "helper" else "approved"
        return RedirectResponse(f"/studies/{quote(study.spec.study_id)}?done={done}", status_code=303)

    # Runs -----------------------------------------------------------------------

    async def start_run(self, request: Request) -> Response:
        study_id = request.path_params["study_id"]
        try:
            run = await self.gateway.start_run(study_id)
        except GatewayError as exc:
            return self.refusal(request, exc, f"start a run of {study_id}")
        log.info("run %s started by %s", run.run_id, request.scope["state"]["session"].user)
        return RedirectResponse(f"/runs/{quote(run.run_id)}", status_code=303)

    async def runs(self, request: Request) -> Response:
        try:
            runs = await self.gateway.runs()
        except GatewayError as exc:
            return self.refusal(request, exc, "list the runs")
        return self.page(request, "runs.html", runs=runs)

    async def _board(self, run: gateway_pb2.Run) -> Board:
        study = await self.gateway.study(run.study_id)
        board = Board.for_parties([(p.org, p.role) for p in study.spec.parties])
        board.run = run
        board.add(gateway_pb2.WatchRunResponse(run=run))
        return board

    async def _replayed(self, run: gateway_pb2.Run) -> Board:
        """The board of an ended run: WatchRun replays its events and returns at once."""
        board = await self._board(run)
        async for response in self.gateway.watch(run.run_id):
            board.add(response)
        return board

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            run = await self.gateway.run(run_id)
            if run is None:
                raise GatewayError(grpc.StatusCode.NOT_FOUND, f"no run {run_id!r} at {self.gateway.org}")
            board = await (
                self._replayed(run)
                if run.state
                in (common_pb2.RUN_STATE_SUCCEEDED, common_pb2.RUN_STATE_FAILED, common_pb2.RUN_STATE_CANCELLED)
                else self._board(run)
            )
        except GatewayError as exc:
            return self.refusal(request, exc, f"show run {run_id}")
        return self.page(
            request, "run.html", run=run, board=board, notice=NOTICES.get(request.query_params.get("done", ""))
        )

    async def run_events(self, request: Request) -> Response:
        """Server-sent events: the re-rendered board after each batch of WatchRun messages;
        the last one is named `end` (the page then stops listening)."""
        run_id = request.path_params["run_id"]
        try:
            run = await self.gateway.run(run_id)
            if run is None:
                raise GatewayError(grpc.StatusCode.NOT_FOUND, f"no run {run_id!r} at {self.gateway.org}")
            board = await self._board(run)
        except GatewayError as exc:
            return PlainTextResponse(str(exc), status_code=STATUS_OF_CODE.get(exc.code, 502))
        session = request.scope["state"]["session"]
        fragment = self.templates.get_template("_board.html")

        def render(problem: str = "") -> str:
            return fragment.render(board=board, run=board.run, problem=problem, csrf_token=session.csrf)

        async def stream() -> AsyncIterator[str]:
            queue: asyncio.Queue = asyncio.Queue()

            async def pump() -> None:
                try:
                    async for response in self.gateway.watch(run_id):
                        await queue.put(response)
                except GatewayError as exc:
                    await queue.put(exc)
                finally:
                    await queue.put(None)

            task = asyncio.create_task(pump())
            try:
                ended = False
                while not ended:
                    ended, problem = await _apply_batch(queue, board)
                    yield sse_message("end" if ended else "board", render(problem))
                    if not ended:
                        await asyncio.sleep(SSE_COALESCE_S)
            finally:
                task.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    async def cancel(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            await self.gateway.cancel(run_id)
        except GatewayError as exc:
            return self.refusal(request, exc, f"cancel run {run_id}")
        return RedirectResponse(f"/runs/{quote(run_id)}?done=cancelled", status_code=303)

    # Results ----------------------------------------------------------------------

    async def result(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if self.gateway.role == "helper":
            # The helper never receives a result; its gateway would refuse as well.
            return self.page(
                request,
                "error.html",
                403,
                what=f"show the result of {run_id}",
                code="PERMISSION_DENIED",
                message="A helper organisation receives no result: only the two data owners do.",
                stale=False,
                back=f"/runs/{quote(run_id)}",
                back_label="Back to the run",
            )
        try:
            run, result = await self.gateway.result(run_id)
            study = await self.gateway.study(run.study_id)
            board = await self._replayed(run)
        except GatewayError as exc:
            return self.refusal(request, exc, f"show the result of {run_id}")
        owners = column_owners(study.spec)
        items = [(c.feature, c.value) for c in result.coefficients]
        cv_alphas = [(p.alpha, p.mean_validation_loss or p.mean_squared_error) for p in result.cv_curve]
        step_labels = [label for _, label in STEPS]
        timeline = board.timeline()
        return self.page(
            request,
            "result.html",
            run=run,
            result=result,
            study=study,
            owners=owners,
            standardized=any(c.standardized_value for c in result.coefficients),
            bars=charts.bar_chart(items),
            cv=charts.cv_chart(cv_alphas, result.alpha) if cv_alphas else None,
            waterfall=charts.waterfall(timeline, step_labels, [org for org, _ in board.parties]) if timeline else None,
            step_labels=step_labels,
        )

    # Audit --------------------------------------------------------------------------

    async def audit(self, request: Request) -> Response:
        try:
            verdict = await self.gateway.verify_audit()
            last = (await self.gateway.audit(0, 1)).last_seq
            start = _int_param(request.query_params.get("from"), default=max(1, last - AUDIT_PAGE + 1))
            start = min(max(1, start), max(1, last))
            page = await self.gateway.audit(start - 1, AUDIT_PAGE)
        except GatewayError as exc:
            return self.refusal(request, exc, "show the audit log")
        records = list(reversed(page.records))  # newest first on the page
        earlier = max(1, start - AUDIT_PAGE) if start > 1 else None
        later = start + AUDIT_PAGE if start + AUDIT_PAGE <= last else None
        return self.page(
            request, "audit.html", verdict=verdict, records=records, last=last, earlier=earlier, later=later
        )


def sse_message(event: str, html: str) -> str:
    """One server-sent event whose data is an HTML fragment (one `data:` line per line)."""
    lines = html.strip().splitlines() or [""]
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


def _int_param(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


async def _apply_batch(queue: asyncio.Queue, board: Board) -> tuple[bool, str]:
    """Wait for the next WatchRun message and take every one already queued into the board:
    (the stream ended, a problem to show)."""
    batch = [await queue.get()]
    while not queue.empty():
        batch.append(queue.get_nowait())
    ended, problem = False, ""
    for item in batch:
        if item is None:
            ended = True
        elif isinstance(item, GatewayError):
            problem = f"Lost the gateway's progress stream ({item}); reload the page."
        else:
            board.add(item)
    return ended, problem
