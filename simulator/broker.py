"""The simulated broker venue: order legs that are acknowledged, filled in parts, modified, canceled.

Each order gets its own generator from the simulator's seeded one when it is submitted; its outcome
(rejected, resting, or filled), its fill plan, the gaps between fills and its webhook faults are
drawn from it. Fills reach the client as execution reports, each with its own execution id, by
webhook (`order.partial_fill`, `order.fill`) and from `GET /v1/orders/{id}/executions`.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simulator.faults import RequestFaults
from simulator.orders import (
    CANCELED,
    CLOSED,
    FILLED,
    MODIFIABLE,
    MODIFICATION_CANCELED,
    MODIFICATION_CONFIRMED,
    MODIFICATION_REJECTED,
    PARTIALLY_FILLED,
    REJECTED,
    WORKING,
    Execution,
    Modification,
    Order,
    OrderRequest,
    plan_fills,
)
from simulator.store import Answer, IdempotencyConflict, Store
from simulator.webhooks import Claim

if TYPE_CHECKING:
    from simulator.engine import Simulator

REJECT_REASON = "the venue refused the order: insufficient liquidity"
MODIFY_REJECT_REASON = "the venue refused the change: the order book moved"


class Conflict(ValueError):
    """The order's status does not allow what was asked (HTTP 409); nothing changed."""


@dataclass(frozen=True)
class _Action:
    """A modify or cancel sent with an Idempotency-Key: what it asked and what it got."""

    request: tuple[str, str, object]  # (order id, action, body)
    answer: Answer


class Broker:
    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.store: Store[Order] = Store()
        self._actions: dict[str, _Action] = {}

    # -- requests --------------------------------------------------------------------------------

    def submit(self, key: str, request: OrderRequest, faults: RequestFaults) -> Answer:
        """Accept an order (status `new`) or replay the key's first answer; IdempotencyConflict on a mismatch."""
        saved = self.store.replay(key, request)
        if saved is not None:
            return Answer(saved.status, saved.body, replayed=True)
        settings = self.simulator.settings
        rng = random.Random(self.simulator.rng.getrandbits(64))
        rejected = rng.random() < settings.order_reject_rate
        rests = rng.random() < settings.order_rest_rate and not rejected
        plan = self._plan(rng, request, request.limit_price, request.quantity)
        order = Order(request=request, idempotency_key=key, rejected=rejected, rests=rests, plan=plan)
        body = order.to_json()
        self.store.add(order, 200, body)
        self.simulator.adopt(order.id, rng, faults)
        self._emit(order, "new")
        self.simulator.spawn(self._work(order))
        return Answer(200, body)

    def modify(self, order_id: str, body: Any, key: str | None) -> Answer:
        """Ask for a new quantity and/or limit price (a cancel/replace, named by `key` in every report
        of the order); 202 now, `order.replaced` or `order.modify_rejected` later. Fills wait meanwhile."""

        def act(order: Order) -> Answer:
            if order.status not in MODIFIABLE:
                raise Conflict(
                    f"order {order.id} is {order.status}: only new, partially filled or filled orders change"
                )
            if order.modification is not None:
                raise Conflict(f"order {order.id} has modification {order.modification.id} pending")
            modification = Modification.parse(body, order, key)
            order.modification = modification
            self.simulator.spawn(self._answer(order, modification))
            return Answer(202, order.to_json())

        return self._once(key, (order_id, "modify", body), act)

    def cancel(self, order_id: str, key: str | None) -> Answer:
        """Cancel a working order, or close the position of a filled one; 409 once it is final."""

        def act(order: Order) -> Answer:
            if order.status in WORKING:
                order.plan.clear()
                order.end_modification(MODIFICATION_CANCELED, "the order was canceled")
                order.move_to(CANCELED)
                self._emit(order, "canceled")
            elif order.status == FILLED:
                order.end_modification(MODIFICATION_CANCELED, "the order was closed")
                order.move_to(CLOSED)
                self._emit(order, "closed")
            else:
                raise Conflict(f"order {order.id} is {order.status}: there is nothing to cancel")
            return Answer(200, order.to_json())

        return self._once(key, (order_id, "cancel", None), act)

    def executions(self, order_id: str) -> list[Execution]:
        order = self.store.get(order_id)
        if order is None:
            raise LookupError(order_id)
        return list(order.executions)

    def _once(self, key: str | None, request: tuple[str, str, object], act: Any) -> Answer:
        """Run `act` on the order, or replay what the same Idempotency-Key got the first time."""
        if key is not None and key in self._actions:
            saved = self._actions[key]
            if saved.request != request:
                raise IdempotencyConflict(key)
            return saved.answer
        order = self.store.get(request[0])
        if order is None:
            raise LookupError(request[0])
        with self.simulator.batch():  # the order's change and the key's answer, or neither
            answer: Answer = act(order)
            if key is not None:
                self._actions[key] = _Action(request, answer)
                self.simulator.save_action(key, request, answer)
            self.simulator.save(order.id)  # a change asked is announced later: journal it now
        return answer

    # -- what the venue does on its own ----------------------------------------------------------

    def _plan(self, rng: random.Random, request: OrderRequest, limit_price: Any, leaves: Any) -> list[Any]:
        parts_max = self.simulator.settings.order_fill_parts_max
        return plan_fills(rng, request.type, request.side, limit_price, request.symbol, leaves, parts_max)

    async def _pause(self, order: Order) -> None:
        settings = self.simulator.settings
        rng = self.simulator.object_rng(order.id)
        await asyncio.sleep(rng.randint(settings.settle_min_ms, settings.settle_max_ms) / 1000)

    async def _work(self, order: Order) -> None:
        """Reject the order, or fill it one planned part at a time until nothing is left."""
        if order.rests:
            return  # works until canceled
        while order.status in WORKING:
            await self._pause(order)
            if order.status not in WORKING:
                return
            if order.rejected:
                order.reject_reason = REJECT_REASON
                order.move_to(REJECTED)
                order.end_modification(MODIFICATION_CANCELED, "the order was rejected")
                self._emit(order, "rejected")
                return
            if order.modification is not None or not order.plan:
                continue  # fills wait while a change is pending
            quantity, price = order.plan.pop(0)
            execution = order.fill(quantity, price)
            self._emit(order, execution.exec_type, execution)

    async def _answer(self, order: Order, modification: Modification) -> None:
        """Confirm (`replaced`) or refuse (`modify_rejected`) a pending modification."""
        await self._pause(order)
        if order.modification is not modification:
            return  # canceled, closed or rejected meanwhile
        rng = self.simulator.object_rng(order.id)
        if rng.random() < self.simulator.settings.modify_reject_rate:
            order.end_modification(MODIFICATION_REJECTED, MODIFY_REJECT_REASON)
            self._emit(order, "modify_rejected")
            return
        order.end_modification(MODIFICATION_CONFIRMED)
        if modification.quantity is not None:
            order.quantity = modification.quantity
        if modification.limit_price is not None:
            order.limit_price = modification.limit_price
        leaves = order.quantity - order.filled_quantity
        order.plan = self._plan(rng, order.request, order.limit_price, leaves) if leaves else []
        was_filled = order.status == FILLED
        if not leaves and order.status != FILLED:
            order.move_to(FILLED)
        elif leaves and was_filled:
            order.move_to(PARTIALLY_FILLED)  # a larger quantity: the order works again
        self._emit(order, "replaced")
        if leaves and was_filled:
            self.simulator.spawn(self._work(order))

    def _emit(self, order: Order, exec_type: str, execution: Execution | None = None) -> None:
        def report(status: str | None, kind: str) -> dict[str, Any]:
            return {
                **order.to_json(status),  # its latest modification too, named by its key
                "exec_type": kind,
                "execution": None if execution is None or status else execution.to_json(),
            }

        claim = None
        if exec_type in ("fill", "rejected"):
            claimed = REJECTED if exec_type == "fill" else CANCELED
            claim = Claim(f"order.{claimed}", claimed, report(claimed, claimed))
        self.simulator.publish(
            order.id, f"order.{exec_type}", order.status, report(None, exec_type), first=exec_type == "new", claim=claim
        )

    # -- the journal -----------------------------------------------------------------------------

    def resume(self, order: Order) -> None:
        """Go on with an order taken back from the journal: it fills if it works, its pending change is answered."""
        if order.status in WORKING:
            self.simulator.spawn(self._work(order))
        if order.modification is not None:
            self.simulator.spawn(self._answer(order, order.modification))

    def restore_action(self, key: str, request: tuple[str, str, object], answer: Answer) -> None:
        """Take back the answer a modify or cancel got under this Idempotency-Key."""
        self._actions[key] = _Action(request, answer)

    # -- truth -----------------------------------------------------------------------------------

    def truth(self, events: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        return [
            {
                **order.to_json(),
                "final_status": order.status,
                "history": order.history,
                "will_reject": order.rejected and order.status in WORKING,
                "rests": order.rests,
                "executions": [execution.to_json() for execution in order.executions],
                "planned_fills": [{"quantity": str(q), "price": str(p)} for q, p in order.plan],
                "create_fault": self.simulator.create_faults.get(order.id, "none"),
                "webhooks": events.get(order.id, []),
            }
            for order in self.store.objects.values()
        ]
