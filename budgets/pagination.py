"""The API's limit/offset pagination, bounded so no `limit` or `offset` can ask the database
for more than a page or for an offset it cannot represent."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.pagination import LimitOffsetPagination, _positive_int

# Beyond any table's size, and far inside the 64-bit integers SQL offsets are.
MAX_OFFSET = 10**12


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """`limit` is cut to TB_API_MAX_LIMIT and `offset` to MAX_OFFSET (an empty page)."""

    @property
    def max_limit(self) -> int:  # type: ignore[override]
        return settings.TB_API_MAX_LIMIT

    def get_offset(self, request: Any) -> int:
        try:
            return _positive_int(request.query_params[self.offset_query_param], cutoff=MAX_OFFSET)
        except (KeyError, ValueError):
            return 0
