"""The pages of the logged-in steps: "Mes informations" and steps 0 to 4 (no JavaScript).

Each step page reads where the insured's open procedure stands and redirects to the right page,
so the back button and a reload never break the walk. Every form post carries the session's
synchronizer token. Errors tied to a field are shown next to it (``aria-invalid``,
``aria-describedby``) with a suggestion, all at once and listed in a summary at the top; errors
about the whole procedure go back to "Mes informations" with a message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from email_change._errors import ConsentMissing, EmailChangeError, MismatchedConfirmation
from email_change._machine import AddressForm, ProcedureState
from email_change._values import Channel, ConsentPurpose, address_key, parse_address
from email_change._views import NextStep, ProcedureView
from email_change.adapters.asgi._http import error_fields
from email_change.adapters.asgi._pages import (
    PageContext,
    Pages,
    form_choice,
    form_text,
    read_form,
    redirect,
)
from email_change.adapters.asgi._sessions import authenticated_at

__all__ = ["STEP_URL", "routes"]

STEP_URL = {
    NextStep.ENTER_CODE: "/email/code",
    NextStep.ENTER_SERIAL: "/email/numero-de-serie",
    NextStep.ENTER_NEW_ADDRESS: "/email/nouvelle-adresse",
    NextStep.OPEN_MAILBOX: "/email/deconnecte",
    NextStep.DONE: "/mes-informations",
}
#: Which field an error belongs to, per page; other errors concern the whole procedure.
_FIELD_OF = {
    "code.format": "code",
    "code.wrong": "code",
    "code.expired": "code",
    "code.spent": "code",
    "serial.format": "serial",
    "serial.wrong": "serial",
    "serial.no_card": "serial",
    "address.invalid": "new_address",
    "address.same": "new_address",
    "address.mismatch": "confirmation",
}
_PAGE_ERRORS = frozenset(
    {
        "resend.cooldown",
        "resend.exhausted",
        "insured.budget_spent",
        "service.unavailable",
        "procedure.conflict",
    }
)


class _Steps(Pages):
    """Mes informations and steps 0 to 4."""

    async def _current(self, request: Request, want: NextStep) -> ProcedureView | Response:
        """The open procedure if it is at ``want``, else a redirect to where it stands."""
        view = await run_in_threadpool(self.service.current, self.insured(request))
        if view is None or view.next_step is NextStep.DONE:
            if view is not None and view.state is ProcedureState.EXPIRED:
                text = self.messages.error_text("procedure.expired", self.locale(request))
                self.flash(request, "error", text)
            return redirect("/mes-informations")
        if view.next_step is not want:
            return redirect(STEP_URL[view.next_step])
        return view

    async def _step_post(
        self,
        request: Request,
        *,
        want: NextStep,
        template: str,
        action: Callable[[str, str, FormData], ProcedureView],
        keep: Sequence[str] = (),
        precheck: Callable[[FormData], dict[str, EmailChangeError]] | None = None,
    ) -> Response:
        form = await read_form(request)
        current = await self._current(request, want)
        if isinstance(current, Response):
            return current
        insured = self.insured(request)
        found = precheck(form) if precheck else {}
        try:
            if any(name not in _CONSENTS for name in found):
                raise next(iter(found.values()))  # shown with the others; the service not called
            view = await run_in_threadpool(action, insured, current.procedure_id, form)
        except EmailChangeError as exc:
            return await self._refused(
                request, exc, template=template, form=form, keep=keep, found=found
            )
        if view.next_step is NextStep.OPEN_MAILBOX:
            # Step 4: the insured is logged out everywhere; only the masked address stays, for
            # the next page.
            await run_in_threadpool(self.sessions.end_all, request, insured)
            request.session["masked_new"] = view.new_address or ""
        return redirect(STEP_URL[view.next_step])

    async def _refused(
        self,
        request: Request,
        exc: EmailChangeError,
        *,
        template: str,
        form: FormData,
        keep: Sequence[str],
        found: Mapping[str, EmailChangeError],
    ) -> Response:
        field = _field_of(exc)
        if field is None and exc.code not in _PAGE_ERRORS:
            self.flash(request, "error", self.error_text(request, exc))
            return redirect("/mes-informations")
        current = await self._current(request, _next_of(template))
        if isinstance(current, Response):
            self.flash(request, "error", self.error_text(request, exc))
            return current
        every = {**found, (field or "page"): exc}
        errors = {name: self.renderer.error(request, error) for name, error in every.items()}
        values = {name: form_text(form, name) for name in keep}
        return self.page(
            request,
            template,
            exc.http_status,
            view=current,
            errors=errors,
            values=values,
            **self._step_context(request, current),
        )

    def _step_context(self, request: Request, view: ProcedureView) -> dict[str, Any]:
        policy, locale = self.service.policy, self.locale(request)
        return {
            "code_minutes": int(policy.code_lifetime.total_seconds() // 60),
            "code_length": policy.code_length,
            "card_help": [(m.value, self.messages.card_help(m, locale)) for m in view.card_help],
        }

    async def step_get(self, request: Request) -> Response:
        want, template = _PAGES[request.url.path]
        current = await self._current(request, want)
        if isinstance(current, Response):
            return current
        return self.page(request, template, view=current, **self._step_context(request, current))

    # --- the steps -------------------------------------------------------------------------------

    async def profile(self, request: Request) -> Response:
        insured = self.hook(request)
        if not insured:
            return redirect("/connexion") if self.authenticate else self.login_needed(request)
        view = await run_in_threadpool(self.service.current, insured)
        address = None
        if self.account_address is not None:
            address = await run_in_threadpool(self.account_address, insured)
        resuming = view is not None and view.next_step is not NextStep.DONE
        return self.page(
            request,
            "profile.html",
            resuming=resuming,
            address=address,
            step_url=STEP_URL[view.next_step] if view else None,
        )

    async def start(self, request: Request) -> Response:
        await read_form(request)
        insured = self.insured(request)
        try:
            view = await run_in_threadpool(
                lambda: self.service.start(
                    insured,
                    channel=Channel.WEBSITE,
                    authenticated_at=authenticated_at(request.session),
                )
            )
        except EmailChangeError as exc:
            self.flash(request, "error", self.error_text(request, exc))
            return redirect("/mes-informations")
        return redirect(STEP_URL[view.next_step])

    async def submit_code(self, request: Request) -> Response:
        return await self._step_post(
            request,
            want=NextStep.ENTER_CODE,
            template="code.html",
            action=lambda i, p, f: self.service.submit_code(i, p, form_text(f, "code")),
        )

    async def resend_code(self, request: Request) -> Response:
        response = await self._step_post(
            request,
            want=NextStep.ENTER_CODE,
            template="code.html",
            action=lambda i, p, _f: self.service.resend_code(i, p),
        )
        if response.status_code == 303:
            self.flash(request, "status", self.renderer.text(request, "web.code.resent"))
        return response

    async def submit_serial(self, request: Request) -> Response:
        return await self._step_post(
            request,
            want=NextStep.ENTER_SERIAL,
            template="serial.html",
            action=lambda i, p, f: self.service.submit_serial(i, p, form_text(f, "serial")),
        )

    async def submit_address(self, request: Request) -> Response:
        locale = self.locale(request)
        version = self.settings.consent_wording_version or self.messages.template(
            locale, "web", "address", "wording_version"
        )

        def action(insured: str, procedure_id: str, form: FormData) -> ProcedureView:
            address_form = AddressForm(
                new_address=form_text(form, "new_address"),
                confirmation=form_text(form, "confirmation"),
                general_information=form_choice(form, ConsentPurpose.GENERAL_INFORMATION.value),
                studies_and_research=form_choice(form, ConsentPurpose.STUDIES_AND_RESEARCH.value),
                wording_version=version,
                channel=Channel.WEBSITE,
            )
            return self.service.submit_new_address(insured, procedure_id, address_form)

        smtputf8 = self.service.policy.allow_smtputf8
        keep = ("new_address", "confirmation", *_CONSENTS)
        return await self._step_post(
            request,
            want=NextStep.ENTER_NEW_ADDRESS,
            template="address.html",
            action=action,
            keep=keep,
            precheck=lambda form: address_form_errors(form, allow_smtputf8=smtputf8),
        )

    async def cancel(self, request: Request) -> Response:
        await read_form(request)
        insured = self.insured(request)
        view = await run_in_threadpool(self.service.current, insured)
        if view is not None:
            try:
                await run_in_threadpool(self.service.cancel, insured, view.procedure_id)
                self.flash(request, "status", self.renderer.text(request, "web.common.cancelled"))
            except EmailChangeError as exc:
                self.flash(request, "error", self.error_text(request, exc))
        return redirect("/mes-informations")

    async def logged_out(self, request: Request) -> Response:
        masked = request.session.get("masked_new")
        return self.page(
            request,
            "logged_out.html",
            masked=masked if isinstance(masked, str) else "",
            link_hours=int(self.service.policy.link_lifetime.total_seconds() // 3600),
        )


_CONSENTS = tuple(p.value for p in ConsentPurpose)


def _field_of(error: EmailChangeError) -> str | None:
    if error.code == "consent.missing":
        return str(error_fields(error)["purpose"])
    return _FIELD_OF.get(error.code)


def address_form_errors(form: FormData, *, allow_smtputf8: bool) -> dict[str, EmailChangeError]:
    """The mistakes of step 3's form that need no procedure to see, by field: the page shows
    them all at once (the service then finds, one at a time, what needs the procedure)."""
    found: dict[str, EmailChangeError] = {}
    new, again = form_text(form, "new_address"), form_text(form, "confirmation")
    try:
        key = parse_address(new, allow_smtputf8=allow_smtputf8).key
    except EmailChangeError as exc:
        found["new_address"] = exc
        same = bool(again.strip()) and address_key(again.strip()) == address_key(new.strip())
    else:
        try:
            same = parse_address(again, allow_smtputf8=allow_smtputf8).key == key
        except EmailChangeError:
            same = False
    if not same:
        found["confirmation"] = MismatchedConfirmation()
    for purpose in _CONSENTS:
        if form_choice(form, purpose) is None:
            found[purpose] = ConsentMissing(purpose=purpose)
    return found


def _next_of(template: str) -> NextStep:
    return next(step for step, t in _PAGES.values() if t == template)


_PAGES = {
    "/email/code": (NextStep.ENTER_CODE, "code.html"),
    "/email/numero-de-serie": (NextStep.ENTER_SERIAL, "serial.html"),
    "/email/nouvelle-adresse": (NextStep.ENTER_NEW_ADDRESS, "address.html"),
}


def routes(context: PageContext) -> list[Route]:
    """The routes of the logged-in steps."""
    web = _Steps(context)
    return [
        Route("/", lambda _r: redirect("/mes-informations"), methods=["GET"]),
        Route("/mes-informations", web.profile, methods=["GET"]),
        Route("/email/modifier", web.start, methods=["POST"]),
        *(Route(path, web.step_get, methods=["GET"]) for path in _PAGES),
        Route("/email/code", web.submit_code, methods=["POST"]),
        Route("/email/code/renvoyer", web.resend_code, methods=["POST"]),
        Route("/email/numero-de-serie", web.submit_serial, methods=["POST"]),
        Route("/email/nouvelle-adresse", web.submit_address, methods=["POST"]),
        Route("/email/annuler", web.cancel, methods=["POST"]),
        Route("/email/deconnecte", web.logged_out, methods=["GET"]),
    ]
