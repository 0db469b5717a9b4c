-- Ballast's invariants in PostgreSQL: every function and trigger of the schema, grouped by the rule
-- each one guards, so that what the database enforces can be read here from top to bottom.
--
-- The tables, their columns, keys and CHECK constraints are declared in server/db/schema.py; what
-- lives here are the rules a CHECK cannot express: history that is only ever appended to, state
-- machines, a row's terms that never change, sums across rows, a hash chain. They hold whatever the
-- Python code does, and whoever writes SQL by hand.
--
-- A refusal names the rule it enforces: ERRCODE 'check_violation' with CONSTRAINT = '<rule>' (asyncpg
-- reads it as constraint_name; the services and the specs match on those names).
--
-- This file describes the head revision: tests/integration/test_migrations.py builds a database from
-- it and schema.py and compares that with one built by the migrations, function by function and
-- trigger by trigger. The baseline revision (server/db/migrations/versions/0014_baseline.py) loads it;
-- a later revision that changes a function or a trigger carries the change itself, and the same change
-- is made here.
--
--   1. Rules are data, and history is only appended to
--   2. A payment starts RECORDED, keeps its terms, and moves only along its machine
--   3. A provider's id for a payment is set once
--   4. A leg starts SUBMITTED, keeps its terms, and moves only along its machine and by its fills
--   5. Every ledger entry is a balanced double entry
--   6. The audit log is a hash chain per aggregate
--   7. A new outbox event wakes the relays
--   8. A refund holds part of its captured payment, keeps its terms, and moves only along its machine
--   9. A report is kept as it was received


-- =================================================================================================
-- 1. Rules are data, and history is only appended to
-- =================================================================================================

-- The one refusal of every append-only table: a row may be added (where the table allows it) but
-- never changed or removed, and the table never truncated.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

-- The rule tables are snapshots of server/domain, written by migrations: nobody extends a state
-- machine or the correction table with SQL, so they refuse additions too.
CREATE TRIGGER payment_state_transitions_append_only BEFORE INSERT OR UPDATE OR DELETE ON payment_state_transitions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER payment_state_transitions_no_truncate BEFORE TRUNCATE ON payment_state_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER payment_corrections_append_only BEFORE INSERT OR UPDATE OR DELETE ON payment_corrections
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER payment_corrections_no_truncate BEFORE TRUNCATE ON payment_corrections
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER leg_state_transitions_append_only BEFORE INSERT OR UPDATE OR DELETE ON leg_state_transitions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER leg_state_transitions_no_truncate BEFORE TRUNCATE ON leg_state_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER refund_state_transitions_append_only BEFORE INSERT OR UPDATE OR DELETE ON refund_state_transitions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER refund_state_transitions_no_truncate BEFORE TRUNCATE ON refund_state_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- History: every state change, every witness's word, every posting and every audit entry is kept as
-- written.
CREATE TRIGGER payment_transitions_append_only BEFORE UPDATE OR DELETE ON payment_transitions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER payment_transitions_no_truncate BEFORE TRUNCATE ON payment_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER provider_statuses_append_only BEFORE UPDATE OR DELETE ON provider_statuses
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER provider_statuses_no_truncate BEFORE TRUNCATE ON provider_statuses
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER webhook_deliveries_append_only BEFORE UPDATE OR DELETE ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TRIGGER refund_transitions_append_only BEFORE UPDATE OR DELETE ON refund_transitions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER refund_transitions_no_truncate BEFORE TRUNCATE ON refund_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER leg_transitions_append_only BEFORE UPDATE OR DELETE ON leg_transitions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER leg_transitions_no_truncate BEFORE TRUNCATE ON leg_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER leg_fills_append_only BEFORE UPDATE OR DELETE ON leg_fills
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER leg_fills_no_truncate BEFORE TRUNCATE ON leg_fills
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER ledger_lines_append_only BEFORE UPDATE OR DELETE ON ledger_lines
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER ledger_lines_no_truncate BEFORE TRUNCATE ON ledger_lines
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();


-- =================================================================================================
-- 2. A payment starts RECORDED, keeps its terms, and moves only along its machine
-- =================================================================================================

-- A payment is born RECORDED with nothing refunded; its amount, currency, client and idempotency key
-- never change; its state (and when it first SUCCEEDED, succeeded_at) changes only by appending a
-- payment_transitions row, and what its refunds hold and returned only by its refunds (section 8):
-- their triggers, one level down, are the only writers of payments.state, succeeded_at, refund_held
-- and refunded.
CREATE FUNCTION payments_guard_state() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER payments_guard_state BEFORE INSERT OR UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_guard_state();

-- Each appended transition is checked before it is stored, under its payment's row lock: it starts
-- from the state the payment is in (another writer got there first: a serialization failure, so the
-- caller retries on fresh data), and it is a move of the machine (payment_state_transitions) or a
-- correction of the correction table (payment_corrections). A correction a person must approve, and
-- any correction of a payment corrected before, needs approved_by. The moves its own refunds make
-- say what they returned: PARTIALLY_REFUNDED some of the payment, REFUNDED (from SUCCEEDED or
-- PARTIALLY_REFUNDED) all of it.
CREATE FUNCTION payment_transitions_apply() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER payment_transitions_apply BEFORE INSERT ON payment_transitions
    FOR EACH ROW EXECUTE FUNCTION payment_transitions_apply();

-- After the statement, the payments move together, in one UPDATE. Each transition was checked against
-- the state its payment had before the statement, so a payment may move once per statement (twice
-- would skip a check). A payment that moves starts its own check schedule: its attempts reset, and a
-- check already due (a webhook asked for it) survives only while the payment stays undecided. A move to
-- SUCCEEDED keeps the earliest time the payment succeeded (succeeded_at).
CREATE FUNCTION payment_transitions_move() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER payment_transitions_move AFTER INSERT ON payment_transitions
    REFERENCING NEW TABLE AS appended FOR EACH STATEMENT EXECUTE FUNCTION payment_transitions_move();


-- =================================================================================================
-- 3. A provider's id for a payment is set once
-- =================================================================================================

-- The id the provider gave a payment is how every later answer is matched to it: once known, it
-- never changes.
CREATE FUNCTION payments_guard_provider_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.provider_payment_id IS NOT NULL AND NEW.provider_payment_id IS DISTINCT FROM OLD.provider_payment_id THEN
        RAISE EXCEPTION 'payment %: provider payment id % is set once, not changed to %',
            OLD.id, OLD.provider_payment_id, NEW.provider_payment_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_provider_id_once';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER payments_guard_provider_id BEFORE UPDATE OF provider_payment_id ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_guard_provider_id();


-- =================================================================================================
-- 4. A leg starts SUBMITTED, keeps its terms, and moves only along its machine and by its fills
-- =================================================================================================

-- A leg is born SUBMITTED and unfilled; its state and fill totals change only through leg_transitions
-- and leg_fills (whose triggers, one level down, are their only writers); its instrument, side, type
-- and currency never change; its quantity and limit price change only while MODIFYING, when the venue
-- confirms a modification; its filled quantity never decreases (the legs CHECK refuses an overfill).
CREATE FUNCTION legs_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state <> 'SUBMITTED' OR NEW.filled_quantity <> 0 OR NEW.fill_notional <> 0 THEN
            RAISE EXCEPTION 'a leg starts SUBMITTED and unfilled'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'legs_initial_state';
        END IF;
        RETURN NEW;
    END IF;
    IF pg_trigger_depth() < 2 AND (NEW.state IS DISTINCT FROM OLD.state
            OR NEW.filled_quantity IS DISTINCT FROM OLD.filled_quantity
            OR NEW.fill_notional IS DISTINCT FROM OLD.fill_notional) THEN
        RAISE EXCEPTION 'leg %: state and fills change only through leg_transitions and leg_fills', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'legs_change_by_evidence';
    END IF;
    IF (NEW.order_id, NEW.position, NEW.instrument_symbol, NEW.side, NEW.order_type, NEW.currency_code)
            IS DISTINCT FROM (OLD.order_id, OLD.position, OLD.instrument_symbol, OLD.side, OLD.order_type,
                              OLD.currency_code) THEN
        RAISE EXCEPTION 'leg %: instrument, side, type and currency never change', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'legs_terms_immutable';
    END IF;
    -- quantity and limit price change only when the venue confirms a modification
    IF (NEW.quantity, NEW.limit_price) IS DISTINCT FROM (OLD.quantity, OLD.limit_price)
            AND OLD.state <> 'MODIFYING' THEN
        RAISE EXCEPTION 'leg %: quantity and limit price change only through a confirmed modification', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'legs_terms_by_modification';
    END IF;
    IF NEW.filled_quantity < OLD.filled_quantity THEN
        RAISE EXCEPTION 'leg %: filled quantity may not decrease (% -> %)', OLD.id, OLD.filled_quantity,
            NEW.filled_quantity USING ERRCODE = 'check_violation', CONSTRAINT = 'legs_fills_never_decrease';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER legs_guard BEFORE INSERT OR UPDATE ON legs
    FOR EACH ROW EXECUTE FUNCTION legs_guard();

-- Appending a transition moves the leg, under its row lock: from the state it is in (another writer
-- got there first: a serialization failure), along a pair of leg_state_transitions (a snapshot of
-- server/domain/order_legs.py).
CREATE FUNCTION leg_transitions_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    current_state text;
BEGIN
    SELECT state INTO current_state FROM legs WHERE id = NEW.leg_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'leg % does not exist', NEW.leg_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF current_state <> NEW.from_state THEN
        RAISE EXCEPTION 'leg % is %, not % as the transition claims', NEW.leg_id, current_state,
            NEW.from_state USING ERRCODE = 'serialization_failure';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM leg_state_transitions
                   WHERE from_state = NEW.from_state AND to_state = NEW.to_state) THEN
        RAISE EXCEPTION 'order leg: % -> % is not an allowed transition', NEW.from_state, NEW.to_state
            USING ERRCODE = 'check_violation', CONSTRAINT = 'leg_transition_allowed';
    END IF;
    UPDATE legs SET state = NEW.to_state, updated_at = NEW.occurred_at WHERE id = NEW.leg_id;
    RETURN NEW;
END $$;

CREATE TRIGGER leg_transitions_apply BEFORE INSERT ON leg_transitions
    FOR EACH ROW EXECUTE FUNCTION leg_transitions_apply();

-- A fill adds to its leg's totals, exactly (NUMERIC arithmetic does not round), and only while the
-- leg works at the venue (a MODIFYING leg still takes the fills made under its old terms). The legs
-- CHECK refuses an overfill; the leg_fills primary key a second copy of an execution.
CREATE FUNCTION leg_fills_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    current_state text;
BEGIN
    SELECT state INTO current_state FROM legs WHERE id = NEW.leg_id FOR UPDATE;
    IF current_state NOT IN ('PENDING', 'PARTIALLY_FILLED', 'MODIFYING') THEN
        RAISE EXCEPTION 'leg % is %: only a working leg (PENDING, PARTIALLY_FILLED, MODIFYING) can fill', NEW.leg_id,
            current_state USING ERRCODE = 'check_violation', CONSTRAINT = 'leg_fills_working_leg';
    END IF;
    UPDATE legs SET filled_quantity = filled_quantity + NEW.quantity,
                    fill_notional = fill_notional + NEW.quantity * NEW.price,
                    updated_at = now()
    WHERE id = NEW.leg_id;
    RETURN NEW;
END $$;

CREATE TRIGGER leg_fills_apply AFTER INSERT ON leg_fills
    FOR EACH ROW EXECUTE FUNCTION leg_fills_apply();


-- =================================================================================================
-- 5. Every ledger entry is a balanced double entry
-- =================================================================================================

-- At commit (the triggers are deferred, so an entry and its lines are written in any order): every
-- entry has two or more lines, and its lines sum to zero in each currency. One query reads the lines.
CREATE FUNCTION ledger_entry_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    entry uuid;
    line_count bigint;
    unbalanced text;
BEGIN
    IF TG_ARGV[0] = 'id' THEN  -- the entry's id column, named by the trigger
        entry := NEW.id;
    ELSE
        entry := NEW.entry_id;
    END IF;
    SELECT coalesce(sum(lines), 0),
           string_agg(currency_code || ' ' || total, ', ') FILTER (WHERE total <> 0)
    INTO line_count, unbalanced
    FROM (SELECT currency_code, count(*) AS lines, sum(amount) AS total FROM ledger_lines
          WHERE entry_id = entry GROUP BY currency_code) AS totals;
    IF line_count < 2 THEN
        RAISE EXCEPTION 'ledger entry % has % lines; a double entry needs two or more', entry, line_count
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entry_lines';
    END IF;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entry % does not sum to zero: %', entry, unbalanced
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entry_balanced';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_check_balanced('id');
CREATE CONSTRAINT TRIGGER ledger_lines_balanced AFTER INSERT ON ledger_lines
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_check_balanced('entry_id');


-- =================================================================================================
-- 6. The audit log is a hash chain per aggregate
-- =================================================================================================

-- An entry's hash covers the previous entry's hash and its own content, so changing or removing any
-- entry breaks every hash after it (server/services/audit.py finds the first broken link).
CREATE FUNCTION audit_entry_hash(previous bytea, aggregate_type text, aggregate_id text, sequence bigint,
                                 action text, actor text, payload jsonb, created_at timestamptz)
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    -- a JSON array is an unambiguous encoding: no field can pass for its neighbour
    SELECT sha256(previous || convert_to(jsonb_build_array(
        aggregate_type, aggregate_id, sequence, action, actor, payload,
        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text, 'UTF8'))
$$;

-- The chain is computed here, never by callers: the sequence number, the previous hash, the time and
-- the entry's own hash are set on insert, whatever the caller sent.
CREATE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_sequence bigint;
    last_hash bytea;
BEGIN
    SELECT sequence, hash INTO last_sequence, last_hash FROM audit_log
    WHERE aggregate_type = NEW.aggregate_type AND aggregate_id = NEW.aggregate_id
    ORDER BY sequence DESC LIMIT 1;
    NEW.sequence := coalesce(last_sequence, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, '\x'::bytea);
    NEW.created_at := clock_timestamp();
    NEW.hash := audit_entry_hash(NEW.prev_hash, NEW.aggregate_type, NEW.aggregate_id, NEW.sequence,
                                 NEW.action, NEW.actor, NEW.payload, NEW.created_at);
    RETURN NEW;
END $$;

CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_chain();


-- =================================================================================================
-- 7. A new outbox event wakes the relays
-- =================================================================================================

-- Not a rule but a promise about latency: a NOTIFY at commit wakes idle relays, so an event waits
-- for no poll interval. Relays poll as well, so a lost notification delays an event, never loses it.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ballast_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();


-- =================================================================================================
-- 8. A refund holds part of its captured payment, keeps its terms, and moves only along its machine
-- =================================================================================================

-- A refund is born RECORDED, of a payment whose money is captured (SUCCEEDED or PARTIALLY_REFUNDED),
-- in its currency, for its client. From then on its amount counts against the payment (refund_held)
-- until it ends without money moving; the payments CHECK keeps what all its refunds hold within the
-- payment's amount, so concurrent refunds (each waits for the payment's row lock here) never add up
-- to more than was captured. Its terms never change; its state changes only by appending a
-- refund_transitions row (whose trigger, one level down, is the only writer of refunds.state).
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

-- Each appended transition is checked under its refund's row lock: it starts from the state the refund
-- is in (another writer got there first: a serialization failure), and it is a move of the machine
-- (refund_state_transitions). It moves the refund, and the payment's totals with it: a refund that
-- ends without money moving (FAILED, REJECTED, EXPIRED) no longer holds its amount; one that
-- SUCCEEDED adds it to what was returned. A moved refund starts its own check schedule, as a payment.
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

-- =================================================================================================
-- 9. A report is kept as it was received
-- =================================================================================================

-- A report's raw bytes and its canonical rows are the evidence every finding and case cites: written
-- once by their run, never changed or removed.
CREATE TRIGGER report_chunks_append_only BEFORE UPDATE OR DELETE ON report_chunks
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TRIGGER report_chunks_no_truncate BEFORE TRUNCATE ON report_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER report_rows_append_only BEFORE UPDATE OR DELETE ON report_rows
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TRIGGER report_rows_no_truncate BEFORE TRUNCATE ON report_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
