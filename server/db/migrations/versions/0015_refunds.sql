-- Revision 0015 (refunds): the functions it changes and the functions and triggers it adds, as it
-- loads them; frozen, as the revision is (server/db/invariants.sql describes the head revision).

CREATE TRIGGER refund_state_transitions_append_only BEFORE INSERT OR UPDATE OR DELETE ON refund_state_transitions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TRIGGER refund_state_transitions_no_truncate BEFORE TRUNCATE ON refund_state_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER refund_transitions_append_only BEFORE UPDATE OR DELETE ON refund_transitions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TRIGGER refund_transitions_no_truncate BEFORE TRUNCATE ON refund_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE OR REPLACE FUNCTION payments_guard_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND (NEW.state <> 'RECORDED' OR NEW.refund_held <> 0 OR NEW.refunded <> 0) THEN
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
    IF TG_OP = 'UPDATE' AND NEW.state IS DISTINCT FROM OLD.state AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'payment % state % -> %: only an appended payment_transitions row may change it',
            OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_state_by_transition';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION payment_transitions_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    current_state text;
    approval text;
    captured numeric;
    returned numeric;
BEGIN
    SELECT state, amount, refunded INTO current_state, captured, returned FROM payments
    WHERE id = NEW.payment_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'payment % does not exist', NEW.payment_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF current_state <> NEW.from_state THEN
        RAISE EXCEPTION 'payment % is %, not % as the transition claims', NEW.payment_id, current_state,
            NEW.from_state USING ERRCODE = 'serialization_failure';
    END IF;
    IF NEW.event = 'CORRECTION' THEN
        SELECT c.approval INTO approval FROM payment_corrections c
        WHERE c.from_state = NEW.from_state AND c.to_state = NEW.to_state;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'payment: correcting % to % is not in the correction table', NEW.from_state,
                NEW.to_state USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_correction_allowed';
        END IF;
        IF NEW.approved_by IS NULL AND (approval = 'PERSON' OR EXISTS (
                SELECT 1 FROM payment_transitions t
                WHERE t.payment_id = NEW.payment_id AND t.event = 'CORRECTION')) THEN
            RAISE EXCEPTION 'payment %: correcting % to % needs a person''s approval', NEW.payment_id,
                NEW.from_state, NEW.to_state
                USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_correction_approved';
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM payment_state_transitions
                      WHERE from_state = NEW.from_state AND to_state = NEW.to_state) THEN
        RAISE EXCEPTION 'payment: % -> % is not an allowed transition', NEW.from_state, NEW.to_state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_transition_allowed';
    END IF;
    IF NEW.event <> 'CORRECTION' AND NEW.from_state IN ('SUCCEEDED', 'PARTIALLY_REFUNDED') AND (
            (NEW.to_state = 'PARTIALLY_REFUNDED' AND NOT (returned > 0 AND returned < captured))
            OR (NEW.to_state = 'REFUNDED' AND returned <> captured)) THEN
        RAISE EXCEPTION 'payment %: % says what its refunds returned, and they returned % of %', NEW.payment_id,
            NEW.to_state, returned, captured
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_refunded_as_refunds_say';
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION refunds_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state <> 'RECORDED' THEN
            RAISE EXCEPTION 'a refund starts RECORDED, not %', NEW.state
                USING ERRCODE = 'check_violation', CONSTRAINT = 'refunds_initial_state';
        END IF;
        UPDATE payments SET refund_held = refund_held + NEW.amount
        WHERE id = NEW.payment_id AND client_id = NEW.client_id AND currency_code = NEW.currency_code
          AND state IN ('SUCCEEDED', 'PARTIALLY_REFUNDED');
        IF NOT FOUND THEN
            RAISE EXCEPTION 'refund %: payment % is not a captured % payment of client %', NEW.id, NEW.payment_id,
                NEW.currency_code, NEW.client_id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'refunds_of_captured_payment';
        END IF;
        RETURN NEW;
    END IF;
    IF (NEW.payment_id, NEW.client_id, NEW.idempotency_key, NEW.amount, NEW.currency_code)
            IS DISTINCT FROM (OLD.payment_id, OLD.client_id, OLD.idempotency_key, OLD.amount, OLD.currency_code) THEN
        RAISE EXCEPTION 'refund %: payment, client, key, amount and currency never change', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'refunds_terms_immutable';
    END IF;
    IF NEW.state IS DISTINCT FROM OLD.state AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'refund % state % -> %: only an appended refund_transitions row may change it',
            OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'refunds_state_by_transition';
    END IF;
    IF OLD.provider_refund_id IS NOT NULL AND NEW.provider_refund_id IS DISTINCT FROM OLD.provider_refund_id THEN
        RAISE EXCEPTION 'refund %: provider refund id % is set once, not changed to %',
            OLD.id, OLD.provider_refund_id, NEW.provider_refund_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'refunds_provider_id_once';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER refunds_guard BEFORE INSERT OR UPDATE ON refunds
    FOR EACH ROW EXECUTE FUNCTION refunds_guard();

CREATE FUNCTION refund_transitions_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    current_state text;
    refund_amount numeric;
    refund_payment uuid;
BEGIN
    SELECT state, amount, payment_id INTO current_state, refund_amount, refund_payment FROM refunds
    WHERE id = NEW.refund_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'refund % does not exist', NEW.refund_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF current_state <> NEW.from_state THEN
        RAISE EXCEPTION 'refund % is %, not % as the transition claims', NEW.refund_id, current_state,
            NEW.from_state USING ERRCODE = 'serialization_failure';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM refund_state_transitions
                   WHERE from_state = NEW.from_state AND to_state = NEW.to_state) THEN
        RAISE EXCEPTION 'refund: % -> % is not an allowed transition', NEW.from_state, NEW.to_state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'refund_transition_allowed';
    END IF;
    UPDATE refunds SET state = NEW.to_state, updated_at = NEW.occurred_at, check_attempts = 0,
        next_check_at = CASE WHEN NEW.to_state IN ('RECORDED', 'PENDING', 'UNKNOWN')
                              AND next_check_at <= NEW.occurred_at THEN next_check_at END
    WHERE id = NEW.refund_id;
    IF NEW.to_state IN ('FAILED', 'REJECTED', 'EXPIRED') THEN
        UPDATE payments SET refund_held = refund_held - refund_amount WHERE id = refund_payment;
    ELSIF NEW.to_state = 'SUCCEEDED' THEN
        UPDATE payments SET refunded = refunded + refund_amount WHERE id = refund_payment;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER refund_transitions_apply BEFORE INSERT ON refund_transitions
    FOR EACH ROW EXECUTE FUNCTION refund_transitions_apply();
