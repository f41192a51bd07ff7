import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AccountStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_STATUS_UNSPECIFIED: _ClassVar[AccountStatus]
    ACCOUNT_STATUS_OPEN: _ClassVar[AccountStatus]
    ACCOUNT_STATUS_CLOSED: _ClassVar[AccountStatus]

class AccountEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_EVENT_TYPE_UNSPECIFIED: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_OPENED: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_DEPOSITED: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_WITHDRAWN: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_RESERVED: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_RESERVATION_RELEASED: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_RESERVATION_CAPTURED: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_CREDITED: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_CLOSED: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_OVERDRAFT_LIMIT_SET: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_STEP_REFUSED: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_CREDIT_HELD: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_CREDIT_CONFIRMED: _ClassVar[AccountEventType]
    ACCOUNT_EVENT_TYPE_CREDIT_CANCELLED: _ClassVar[AccountEventType]
ACCOUNT_STATUS_UNSPECIFIED: AccountStatus
ACCOUNT_STATUS_OPEN: AccountStatus
ACCOUNT_STATUS_CLOSED: AccountStatus
ACCOUNT_EVENT_TYPE_UNSPECIFIED: AccountEventType
ACCOUNT_EVENT_TYPE_OPENED: AccountEventType
ACCOUNT_EVENT_TYPE_DEPOSITED: AccountEventType
ACCOUNT_EVENT_TYPE_WITHDRAWN: AccountEventType
ACCOUNT_EVENT_TYPE_RESERVED: AccountEventType
ACCOUNT_EVENT_TYPE_RESERVATION_RELEASED: AccountEventType
ACCOUNT_EVENT_TYPE_RESERVATION_CAPTURED: AccountEventType
ACCOUNT_EVENT_TYPE_CREDITED: AccountEventType
ACCOUNT_EVENT_TYPE_CLOSED: AccountEventType
ACCOUNT_EVENT_TYPE_OVERDRAFT_LIMIT_SET: AccountEventType
ACCOUNT_EVENT_TYPE_STEP_REFUSED: AccountEventType
ACCOUNT_EVENT_TYPE_CREDIT_HELD: AccountEventType
ACCOUNT_EVENT_TYPE_CREDIT_CONFIRMED: AccountEventType
ACCOUNT_EVENT_TYPE_CREDIT_CANCELLED: AccountEventType

class Reservation(_message.Message):
    __slots__ = ("reference", "amount", "reserved_at", "expires_at")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RESERVED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    reference: str
    amount: int
    reserved_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, reference: _Optional[str] = ..., amount: _Optional[int] = ..., reserved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Account(_message.Message):
    __slots__ = ("account_id", "owner", "currency", "balance", "reserved", "available", "status", "version", "reservations", "pending_credits", "overdraft_limit")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_CREDITS_FIELD_NUMBER: _ClassVar[int]
    OVERDRAFT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    owner: str
    currency: str
    balance: int
    reserved: int
    available: int
    status: AccountStatus
    version: int
    reservations: _containers.RepeatedCompositeFieldContainer[Reservation]
    pending_credits: int
    overdraft_limit: int
    def __init__(self, account_id: _Optional[str] = ..., owner: _Optional[str] = ..., currency: _Optional[str] = ..., balance: _Optional[int] = ..., reserved: _Optional[int] = ..., available: _Optional[int] = ..., status: _Optional[_Union[AccountStatus, str]] = ..., version: _Optional[int] = ..., reservations: _Optional[_Iterable[_Union[Reservation, _Mapping]]] = ..., pending_credits: _Optional[int] = ..., overdraft_limit: _Optional[int] = ...) -> None: ...

class AccountEvent(_message.Message):
    __slots__ = ("account_id", "version", "type", "amount", "reference", "balance_after", "reserved_after", "occurred_at", "reason", "step")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_FIELD_NUMBER: _ClassVar[int]
    RESERVED_AFTER_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    version: int
    type: AccountEventType
    amount: int
    reference: str
    balance_after: int
    reserved_after: int
    occurred_at: _timestamp_pb2.Timestamp
    reason: str
    step: str
    def __init__(self, account_id: _Optional[str] = ..., version: _Optional[int] = ..., type: _Optional[_Union[AccountEventType, str]] = ..., amount: _Optional[int] = ..., reference: _Optional[str] = ..., balance_after: _Optional[int] = ..., reserved_after: _Optional[int] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., step: _Optional[str] = ...) -> None: ...

class OpenAccountRequest(_message.Message):
    __slots__ = ("account_id", "owner", "currency")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    owner: str
    currency: str
    def __init__(self, account_id: _Optional[str] = ..., owner: _Optional[str] = ..., currency: _Optional[str] = ...) -> None: ...

class GetAccountRequest(_message.Message):
    __slots__ = ("account_id", "as_of_version", "as_of_time")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_VERSION_FIELD_NUMBER: _ClassVar[int]
    AS_OF_TIME_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    as_of_version: int
    as_of_time: _timestamp_pb2.Timestamp
    def __init__(self, account_id: _Optional[str] = ..., as_of_version: _Optional[int] = ..., as_of_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DepositRequest(_message.Message):
    __slots__ = ("account_id", "amount", "request_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: int
    request_id: str
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class WithdrawRequest(_message.Message):
    __slots__ = ("account_id", "amount", "request_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: int
    request_id: str
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class CloseAccountRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class ListAccountEventsRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token", "from_version")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    from_version: int
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., from_version: _Optional[int] = ...) -> None: ...

class ListAccountEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AccountEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AccountEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchAccountRequest(_message.Message):
    __slots__ = ("account_id", "from_version")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    from_version: int
    def __init__(self, account_id: _Optional[str] = ..., from_version: _Optional[int] = ...) -> None: ...

class SetOverdraftLimitRequest(_message.Message):
    __slots__ = ("account_id", "overdraft_limit", "request_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    OVERDRAFT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    overdraft_limit: int
    request_id: str
    def __init__(self, account_id: _Optional[str] = ..., overdraft_limit: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("account_id", "reference", "amount", "epoch", "currency", "expires_at", "owner")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reference: str
    amount: int
    epoch: int
    currency: str
    expires_at: _timestamp_pb2.Timestamp
    owner: str
    def __init__(self, account_id: _Optional[str] = ..., reference: _Optional[str] = ..., amount: _Optional[int] = ..., epoch: _Optional[int] = ..., currency: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class CreditRequest(_message.Message):
    __slots__ = ("account_id", "reference", "amount", "currency", "epoch")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reference: str
    amount: int
    currency: str
    epoch: int
    def __init__(self, account_id: _Optional[str] = ..., reference: _Optional[str] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("account_id", "reference", "epoch", "amount")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reference: str
    epoch: int
    amount: int
    def __init__(self, account_id: _Optional[str] = ..., reference: _Optional[str] = ..., epoch: _Optional[int] = ..., amount: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("account_id", "reference", "epoch")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reference: str
    epoch: int
    def __init__(self, account_id: _Optional[str] = ..., reference: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class HoldCreditRequest(_message.Message):
    __slots__ = ("account_id", "reference", "amount", "currency", "epoch")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reference: str
    amount: int
    currency: str
    epoch: int
    def __init__(self, account_id: _Optional[str] = ..., reference: _Optional[str] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class ConfirmCreditRequest(_message.Message):
    __slots__ = ("account_id", "reference", "epoch")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reference: str
    epoch: int
    def __init__(self, account_id: _Optional[str] = ..., reference: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class CancelCreditRequest(_message.Message):
    __slots__ = ("account_id", "reference", "epoch")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reference: str
    epoch: int
    def __init__(self, account_id: _Optional[str] = ..., reference: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("step_id", "reserve", "credit", "capture", "release", "hold_credit", "confirm_credit", "cancel_credit", "after_step_id")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    HOLD_CREDIT_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_CREDIT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_CREDIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_STEP_ID_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    reserve: ReserveRequest
    credit: CreditRequest
    capture: CaptureRequest
    release: ReleaseRequest
    hold_credit: HoldCreditRequest
    confirm_credit: ConfirmCreditRequest
    cancel_credit: CancelCreditRequest
    after_step_id: int
    def __init__(self, step_id: _Optional[int] = ..., reserve: _Optional[_Union[ReserveRequest, _Mapping]] = ..., credit: _Optional[_Union[CreditRequest, _Mapping]] = ..., capture: _Optional[_Union[CaptureRequest, _Mapping]] = ..., release: _Optional[_Union[ReleaseRequest, _Mapping]] = ..., hold_credit: _Optional[_Union[HoldCreditRequest, _Mapping]] = ..., confirm_credit: _Optional[_Union[ConfirmCreditRequest, _Mapping]] = ..., cancel_credit: _Optional[_Union[CancelCreditRequest, _Mapping]] = ..., after_step_id: _Optional[int] = ...) -> None: ...

class ExecuteStepsRequest(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    def __init__(self, steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ...) -> None: ...

class StepError(_message.Message):
    __slots__ = ("code", "message", "reason", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StepOutcome(_message.Message):
    __slots__ = ("step_id", "account", "error")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    account: Account
    error: StepError
    def __init__(self, step_id: _Optional[int] = ..., account: _Optional[_Union[Account, _Mapping]] = ..., error: _Optional[_Union[StepError, _Mapping]] = ...) -> None: ...

class ExecuteStepsResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[StepOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[StepOutcome, _Mapping]]] = ...) -> None: ...
