-- Revision 0017 (reconciliation at database speed): the functions it replaces, as it loads them;
-- frozen, as the revision is (server/db/invariants.sql describes the head revision).

CREATE OR REPLACE FUNCTION payments_guard_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND (NEW.state <> 'RECORDED' OR NEW.refund_held <> 0 OR NEW.refunded <> 0
                             OR NEW.succeeded_at IS NOT NULL) THEN
        RAISE EXCEPTION 'a payment starts RECORDED with nothing refunded, not %', NEW.state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_initial_state';
    END IF;
    IF TG_OP = 'UPDATE' AND pg_trigger_depth() < 2
            AND (NEW.refund_held, NEW.refunded) IS DISTINCT FROM (OLD.refund_held, OLD.refunded) THEN
        RAISE EXCEPTION 'payment %: what its refunds hold and returned changes only through its refunds', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_refunds_by_refund';
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.amount, NEW.currency_code, NEW.client_id, NEW.idempotency_key)
            IS DISTINCT FROM (OLD.amount, OLD.currency_code, OLD.client_id, OLD.idempotency_key) THEN
        RAISE EXCEPTION 'payment %: amount, currency, client and key never change', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_terms_immutable';
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.state, NEW.succeeded_at) IS DISTINCT FROM (OLD.state, OLD.succeeded_at)
            AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'payment % state % -> %: only an appended payment_transitions row may change it',
            OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_state_by_transition';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION payment_transitions_move() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    twice uuid;
BEGIN
    SELECT payment_id INTO twice FROM appended GROUP BY payment_id HAVING count(*) > 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'payment % moves twice in one statement; append its transitions one at a time', twice
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transition_once_per_statement';
    END IF;
    UPDATE payments p SET state = a.to_state, updated_at = a.occurred_at,
        check_attempts = 0,
        next_check_at = CASE WHEN a.to_state IN ('RECORDED', 'PENDING', 'UNKNOWN')
                              AND p.next_check_at <= a.occurred_at THEN p.next_check_at END,
        succeeded_at = CASE WHEN a.to_state = 'SUCCEEDED' THEN least(p.succeeded_at, a.occurred_at)
                            ELSE p.succeeded_at END
    FROM appended a WHERE p.id = a.payment_id;
    RETURN NULL;
END $$;
