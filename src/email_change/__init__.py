"""email_change: the account e-mail change procedure of a compte ameli, as a library.

A logged-in insured asks to change their address; a security code goes to the current address;
they prove their carte Vitale serial number; they type the new address twice and choose two
consents; the address is registered, they are logged out, and they cannot log in until they
follow the confirmation link mailed to the new address.

Build the service with :func:`build_service`; drive it with :class:`EmailChangeService`.
"""

#: The release, the one place it is written: the package metadata reads it from here
#: (``[tool.setuptools.dynamic]`` in ``pyproject.toml``).
__version__ = "0.1.0.dev0"

from email_change._bootstrap import build_relay, build_service
from email_change._crypto import KeyedDigest, Keyring, SealedSecret
from email_change._errors import (
    AwaitingConfirmation,
    CardNotUsable,
    CodeExpired,
    CodeSpent,
    ConcurrentUpdate,
    ConsentMissing,
    EmailChangeError,
    EventNotAllowed,
    InsuredBudgetSpent,
    InvalidAddress,
    InvalidCodeFormat,
    InvalidForm,
    InvalidLink,
    InvalidSerialFormat,
    LinkExpired,
    MismatchedConfirmation,
    NoCurrentAddress,
    ProcedureExpired,
    ProcedureLocked,
    ProcedureNotFound,
    ResendLimitReached,
    ResendTooSoon,
    SameAddress,
    ServiceUnavailable,
    WrongCode,
    WrongSerial,
)
from email_change._machine import AddressForm, EmailChangeMachine, deadline_of
from email_change._messages import MAIL_KIND_HEADER, MailSettings, Messages
from email_change._policy import Policy
from email_change._ports import (
    AccountDirectory,
    AuditSink,
    Clock,
    Mailer,
    ProcedureStore,
    RandomSource,
    VitaleRegistry,
)
from email_change._records import (
    AccountAction,
    AccountEffect,
    AuditRecord,
    CodeIssue,
    Commit,
    LedgerEntry,
    LedgerKind,
    LinkIssue,
    MailEffect,
    MailKind,
    OutboxItem,
    Procedure,
)
from email_change._relay import Backoff, OutboxRelay, RelayReport
from email_change._service import EmailChangeService
from email_change._values import (
    Card,
    CardModel,
    CardStatus,
    Channel,
    ConsentPurpose,
    ConsentRecord,
    EmailAddress,
    mask_address,
    parse_address,
    parse_code,
    parse_serial,
)
from email_change._views import NextStep, ProcedureView

__all__ = [
    "MAIL_KIND_HEADER",
    "AccountAction",
    "AccountDirectory",
    "AccountEffect",
    "AddressForm",
    "AuditRecord",
    "AuditSink",
    "AwaitingConfirmation",
    "Backoff",
    "Card",
    "CardModel",
    "CardNotUsable",
    "CardStatus",
    "Channel",
    "Clock",
    "CodeExpired",
    "CodeIssue",
    "CodeSpent",
    "Commit",
    "ConcurrentUpdate",
    "ConsentMissing",
    "ConsentPurpose",
    "ConsentRecord",
    "EmailAddress",
    "EmailChangeError",
    "EmailChangeMachine",
    "EmailChangeService",
    "EventNotAllowed",
    "InsuredBudgetSpent",
    "InvalidAddress",
    "InvalidCodeFormat",
    "InvalidForm",
    "InvalidLink",
    "InvalidSerialFormat",
    "KeyedDigest",
    "Keyring",
    "LedgerEntry",
    "LedgerKind",
    "LinkExpired",
    "LinkIssue",
    "MailEffect",
    "MailKind",
    "MailSettings",
    "Mailer",
    "Messages",
    "MismatchedConfirmation",
    "NextStep",
    "NoCurrentAddress",
    "OutboxItem",
    "OutboxRelay",
    "Policy",
    "Procedure",
    "ProcedureExpired",
    "ProcedureLocked",
    "ProcedureNotFound",
    "ProcedureStore",
    "ProcedureView",
    "RandomSource",
    "RelayReport",
    "ResendLimitReached",
    "ResendTooSoon",
    "SameAddress",
    "SealedSecret",
    "ServiceUnavailable",
    "VitaleRegistry",
    "WrongCode",
    "WrongSerial",
    "build_relay",
    "build_service",
    "deadline_of",
    "mask_address",
    "parse_address",
    "parse_code",
    "parse_serial",
]
