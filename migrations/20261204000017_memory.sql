-- Memory (src/memory): facts about a user with provenance, validity and a history
-- of every change; per-user and per-conversation extraction settings and state;
-- extraction runs; and vectors on messages for hybrid recall of past conversations.

CREATE TABLE memories (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('profile', 'fact', 'preference', 'instruction')),
    -- A profile slot (name, timezone, language, …): one active memory per slot.
    slot            text,
    text            text NOT NULL,
    -- Lower-cased, punctuation-free, single-spaced text: duplicates are found by it.
    norm            text NOT NULL,
    confidence      real NOT NULL DEFAULT 1 CHECK (confidence >= 0 AND confidence <= 1),
    pinned          boolean NOT NULL DEFAULT false,
    -- Where it came from: a conversation (with messages and the quoted span), the
    -- app through the API, or the user's own words in a settings screen.
    source          text NOT NULL CHECK (source IN ('conversation', 'api', 'user')),
    conversation_id uuid REFERENCES conversations (id) ON DELETE SET NULL,
    message_ids     text[] NOT NULL DEFAULT '{}',
    quote           text,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- active; superseded (a newer memory replaced it: superseded_by); invalidated
    -- (a contradiction or the user ended it: valid_to).
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'superseded', 'invalidated')),
    valid_from      timestamptz NOT NULL DEFAULT now(),
    valid_to        timestamptz,
    superseded_by   uuid REFERENCES memories (id) ON DELETE SET NULL,
    embedding       vector,
    embedding_model text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    tsv             tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED
);
CREATE INDEX memories_user ON memories (user_id, created_at DESC, id DESC);
CREATE INDEX memories_active ON memories (user_id, kind) WHERE status = 'active';
-- The always-on memories of context assembly (profile, instructions, pinned).
CREATE INDEX memories_always_on ON memories (user_id, pinned DESC, kind, slot, created_at, id)
    WHERE status = 'active' AND (kind IN ('profile', 'instruction') OR pinned);
CREATE UNIQUE INDEX memories_slot ON memories (user_id, slot) WHERE slot IS NOT NULL AND status = 'active';
CREATE INDEX memories_norm ON memories (user_id, norm) WHERE status = 'active';
CREATE INDEX memories_tsv ON memories USING gin (tsv);
CREATE INDEX memories_unembedded ON memories (id) WHERE embedding IS NULL;
CREATE INDEX memories_model ON memories (embedding_model, user_id);
CREATE INDEX memories_superseded_by ON memories (superseded_by) WHERE superseded_by IS NOT NULL;

-- BM25 statistics of each user's active memories: their count and total length,
-- and each lexeme's document frequency, kept by statement triggers in the writer's
-- transaction. (No foreign keys: the rows of a deleted user's memories are
-- subtracted while the user goes.)
CREATE TABLE memory_stats (
    user_id   uuid PRIMARY KEY,
    memories  bigint NOT NULL DEFAULT 0,
    total_len bigint NOT NULL DEFAULT 0
);
CREATE TABLE memory_terms (
    user_id uuid NOT NULL,
    lexeme  text NOT NULL,
    df      integer NOT NULL,
    PRIMARY KEY (user_id, lexeme)
);

-- Adds `sign` times the rows' statistics (a helper of the triggers below).
CREATE FUNCTION memory_stats_add(rows_user uuid[], rows_tsv tsvector[], sign integer) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO memory_stats AS s (user_id, memories, total_len)
    SELECT u, sign * count(*), sign * sum(length(v)) FROM unnest(rows_user, rows_tsv) AS r(u, v) GROUP BY u
    ON CONFLICT (user_id) DO UPDATE SET memories = s.memories + EXCLUDED.memories,
                                        total_len = s.total_len + EXCLUDED.total_len;
    INSERT INTO memory_terms AS t (user_id, lexeme, df)
    SELECT r.u, x.lexeme, sign * count(*) FROM unnest(rows_user, rows_tsv) AS r(u, v) CROSS JOIN LATERAL unnest(r.v) x
    GROUP BY 1, 2
    ON CONFLICT (user_id, lexeme) DO UPDATE SET df = t.df + EXCLUDED.df;
$$;

CREATE FUNCTION memory_stats_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    us uuid[];
    vs tsvector[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(user_id), array_agg(tsv) INTO us, vs FROM new_rows WHERE status = 'active';
        IF us IS NOT NULL THEN PERFORM memory_stats_add(us, vs, 1); END IF;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(user_id), array_agg(tsv) INTO us, vs FROM old_rows WHERE status = 'active';
        IF us IS NOT NULL THEN PERFORM memory_stats_add(us, vs, -1); END IF;
    ELSE
        -- Only rows that left or entered `active`, or changed text, count.
        SELECT array_agg(o.user_id), array_agg(o.tsv) INTO us, vs FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o.status = 'active' AND (n.status <> 'active' OR n.tsv <> o.tsv);
        IF us IS NOT NULL THEN PERFORM memory_stats_add(us, vs, -1); END IF;
        SELECT array_agg(n.user_id), array_agg(n.tsv) INTO us, vs FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE n.status = 'active' AND (o.status <> 'active' OR n.tsv <> o.tsv);
        IF us IS NOT NULL THEN PERFORM memory_stats_add(us, vs, 1); END IF;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER memory_stats_insert AFTER INSERT ON memories REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION memory_stats_change();
CREATE TRIGGER memory_stats_update AFTER UPDATE ON memories REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION memory_stats_change();
CREATE TRIGGER memory_stats_delete AFTER DELETE ON memories REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION memory_stats_change();

-- Every change to a memory. A deleted memory keeps its rows with the text erased.
CREATE TABLE memory_history (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    memory_id     uuid NOT NULL,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event         text NOT NULL CHECK (event IN ('added', 'updated', 'superseded', 'invalidated', 'deleted')),
    actor         text NOT NULL CHECK (actor IN ('user', 'app', 'extractor')),
    text          text,
    -- The other memory involved (the successor of a superseded one, the predecessor
    -- of an update), and the extraction run that made the change.
    related_id    uuid,
    extraction_id uuid,
    at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memory_history_memory ON memory_history (memory_id, id);
CREATE INDEX memory_history_user ON memory_history (user_id, id);

-- Per-user switch: extraction from conversations (on unless the user opts out).
CREATE TABLE memory_settings (
    user_id    uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    extraction boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Per-conversation: remembered or not, and how far extraction has read.
CREATE TABLE memory_conversations (
    conversation_id uuid PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    remember        boolean NOT NULL DEFAULT true,
    extracted_seq   bigint NOT NULL DEFAULT 0,
    pending         integer NOT NULL DEFAULT 0,
    last_message_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memory_conversations_due ON memory_conversations (last_message_at) WHERE pending > 0;

-- One extraction run over a conversation's new messages: visible, never silent.
CREATE TABLE memory_extractions (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    conversation_id uuid REFERENCES conversations (id) ON DELETE SET NULL,
    status          text NOT NULL CHECK (status IN ('running', 'done', 'failed', 'skipped')),
    from_seq        bigint NOT NULL,
    to_seq          bigint NOT NULL,
    messages        integer NOT NULL DEFAULT 0,
    added           integer NOT NULL DEFAULT 0,
    updated         integer NOT NULL DEFAULT 0,
    invalidated     integer NOT NULL DEFAULT 0,
    unchanged       integer NOT NULL DEFAULT 0,
    rejected        integer NOT NULL DEFAULT 0,
    attempt         integer NOT NULL DEFAULT 1,
    model           text,
    error_code      text,
    error           text,
    model_ms        integer,
    total_ms        integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX memory_extractions_user ON memory_extractions (user_id, created_at DESC, id DESC);

-- Vectors for hybrid recall of past messages (computed by the `memory.embed` job;
-- a changed message loses its vector until it is computed again).
ALTER TABLE messages ADD COLUMN embedding vector, ADD COLUMN embedding_model text;
CREATE INDEX messages_unembedded ON messages (owner_id, seq) WHERE embedding IS NULL;

-- A changed message loses its vector.
CREATE FUNCTION memory_message_reset() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.embedding := NULL;
    NEW.embedding_model := NULL;
    RETURN NEW;
END;
$$;
CREATE TRIGGER memory_message_reset BEFORE UPDATE OF parts ON messages
    FOR EACH ROW WHEN (NEW.parts IS DISTINCT FROM OLD.parts) EXECUTE FUNCTION memory_message_reset();

-- A new or changed message counts toward its conversation's next extraction and
-- queues the owner's embedding job, in the writer's transaction.
CREATE FUNCTION memory_message_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO memory_conversations AS mc (conversation_id, user_id, pending, last_message_at)
    VALUES (NEW.conversation_id, NEW.owner_id, 1, now())
    ON CONFLICT (conversation_id) DO UPDATE SET pending = mc.pending + 1, last_message_at = now();
    INSERT INTO jobs (id, kind, payload, max_attempts, unique_key)
    VALUES (gen_random_uuid(), 'memory.embed', jsonb_build_object('user_id', NEW.owner_id), 8, NEW.owner_id::text)
    ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND state = 'queued' DO NOTHING;
    RETURN NULL;
END;
$$;
CREATE TRIGGER memory_message_inserted AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION memory_message_changed();
CREATE TRIGGER memory_message_updated AFTER UPDATE OF parts ON messages
    FOR EACH ROW WHEN (NEW.parts IS DISTINCT FROM OLD.parts) EXECUTE FUNCTION memory_message_changed();
