-- What face detection found on each photo (faces, largest face's box, share and score).
-- NULL for photos stored before faces were checked.
ALTER TABLE photos ADD COLUMN faces JSONB;
