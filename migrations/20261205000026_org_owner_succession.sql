-- An organization always keeps an owner, also when its last owner's account is
-- deleted (through the API, the admin console or a Clerk webhook): the member who
-- has been there longest takes over, admins first. An organization left without
-- members is deleted with what it shares (nobody could reach it any more).
CREATE FUNCTION orgs_keep_an_owner() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    o uuid;
    heir uuid;
BEGIN
    FOR o IN
        SELECT m.org_id FROM org_members m
        WHERE m.user_id = OLD.id AND m.role = 'org:owner'
          AND NOT EXISTS (SELECT 1 FROM org_members x
                          WHERE x.org_id = m.org_id AND x.role = 'org:owner' AND x.user_id <> OLD.id)
    LOOP
        SELECT user_id INTO heir FROM org_members
        WHERE org_id = o AND user_id <> OLD.id
        ORDER BY (role = 'org:admin') DESC, created_at, user_id LIMIT 1;
        IF heir IS NULL THEN
            DELETE FROM organizations WHERE id = o;
        ELSE
            UPDATE org_members SET role = 'org:owner', updated_at = now() WHERE org_id = o AND user_id = heir;
        END IF;
    END LOOP;
    RETURN OLD;
END $$;
CREATE TRIGGER users_keep_org_owners BEFORE DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION orgs_keep_an_owner();
