-- Chat: conversations and messages. Messages keep AI SDK UIMessage `parts` and
-- `metadata` verbatim (jsonb), ordered per conversation by `seq`; message ids are
-- the client's text ids, unique per owner.

CREATE TABLE conversations (
    id               uuid PRIMARY KEY,
    owner_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title            text NOT NULL DEFAULT '',
    visibility       text NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'public')),
    archived         boolean NOT NULL DEFAULT false,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now()
);
-- The list endpoint: mine, (not) archived, newest activity first, id tie-breaker.
CREATE INDEX conversations_owner_activity_idx ON conversations (owner_id, archived, last_activity_at DESC, id DESC);

CREATE TABLE messages (
    owner_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    id              text NOT NULL,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    role            text NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    parts           jsonb NOT NULL,
    metadata        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Full-text search over the text parts.
    search          tsvector GENERATED ALWAYS AS (
                        to_tsvector('english'::regconfig, jsonb_path_query_array(parts, '$[*] ? (@.type == "text").text'))
                    ) STORED,
    PRIMARY KEY (owner_id, id)
);
CREATE INDEX messages_conversation_seq_idx ON messages (conversation_id, seq);
CREATE INDEX messages_search_idx ON messages USING gin (search);
CREATE INDEX messages_owner_seq_idx ON messages (owner_id, seq DESC);

CREATE TABLE message_feedback (
    owner_id        uuid NOT NULL,
    message_id      text NOT NULL,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    value           text NOT NULL CHECK (value IN ('up', 'down')),
    comment         text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, message_id),
    FOREIGN KEY (owner_id, message_id) REFERENCES messages (owner_id, id) ON DELETE CASCADE
);
