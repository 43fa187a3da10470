-- A receiver's feed may be one group's members (RFC 9967 §2.3): it then gets feed:add and
-- feed:remove as users join and leave the group, and the provisioning events of the users
-- in it only. secevents.feed_members is the feed as of the receiver's checkpoint, moved in
-- the same transaction.

ALTER TABLE secevents.receivers ADD COLUMN feed_group uuid;
COMMENT ON COLUMN secevents.receivers.feed_group IS 'When set, the feed is this group''s user members: feed:add/feed:remove as they join and leave, provisioning events only for them. NULL: every user and group of the organization.';

CREATE TABLE secevents.feed_members (
    receiver_id uuid NOT NULL REFERENCES secevents.receivers ON DELETE CASCADE,
    user_id     uuid NOT NULL,
    PRIMARY KEY (receiver_id, user_id)
);
COMMENT ON TABLE secevents.feed_members IS 'The users in a group-scoped receiver''s feed, as of its checkpoint.';

DROP INDEX secevents.pending_order_idx;
CREATE INDEX pending_order_idx ON secevents.pending (receiver_id, tx, seq, jti);
COMMENT ON INDEX secevents.pending_order_idx IS 'Delivery order: log order, and by jti among the SETs of one change (a member added to a group feed each).';
