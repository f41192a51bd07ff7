from bank.v1 import account_pb2 as _account_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NaiveTransferRequest(_message.Message):
    __slots__ = ("transfer_id", "from_account_id", "to_account_id", "amount")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    from_account_id: str
    to_account_id: str
    amount: int
    def __init__(self, transfer_id: _Optional[str] = ..., from_account_id: _Optional[str] = ..., to_account_id: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class NaiveTransferResponse(_message.Message):
    __slots__ = ("transfer_id", "from_account", "to_account")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    from_account: _account_pb2.Account
    to_account: _account_pb2.Account
    def __init__(self, transfer_id: _Optional[str] = ..., from_account: _Optional[_Union[_account_pb2.Account, _Mapping]] = ..., to_account: _Optional[_Union[_account_pb2.Account, _Mapping]] = ...) -> None: ...
