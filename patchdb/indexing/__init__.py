"""The patch index file: FAISS helpers (:mod:`.faiss_ops`), the stored layout (:mod:`.format`), the
windows cut from images (:mod:`.windows`), the builder (:mod:`.builder`) and the reader (:mod:`.reader`)."""
