-- The read models' child tables lose their foreign keys: their one writer, the projection,
-- deletes child rows itself in the same statement batch, and the per-row checks were the
-- largest single cost of a catch-up (every email row looked its user up again).
ALTER TABLE projections.user_emails DROP CONSTRAINT user_emails_user_id_fkey;
ALTER TABLE projections.group_members DROP CONSTRAINT group_members_group_id_fkey;
