-- projection_states_complete fires only for a row that has complete_at set (a reset model
-- catching up): every batch moves a position, and calling a plpgsql function for each state
-- row of each batch to find complete_at empty cost more than the UPDATE itself.

DROP TRIGGER projection_states_complete ON projections.projection_states;
CREATE TRIGGER projection_states_complete
    BEFORE UPDATE OF position_tx, position_seq ON projections.projection_states
    FOR EACH ROW WHEN (NEW.complete_at_tx IS NOT NULL)
    EXECUTE FUNCTION projections.clear_complete_at();
COMMENT ON TRIGGER projection_states_complete ON projections.projection_states IS 'Clears complete_at once the position reaches it.';
