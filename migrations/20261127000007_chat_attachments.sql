-- Chat attachments: a message links to storage objects its owner owns. Deleting the
-- message or the object removes the link.

CREATE TABLE message_attachments (
    owner_id   uuid NOT NULL,
    message_id text NOT NULL,
    object_id  uuid NOT NULL REFERENCES storage_objects (id) ON DELETE CASCADE,
    position   int NOT NULL,
    PRIMARY KEY (owner_id, message_id, object_id),
    FOREIGN KEY (owner_id, message_id) REFERENCES messages (owner_id, id) ON DELETE CASCADE
);
CREATE INDEX message_attachments_object_idx ON message_attachments (object_id);
