/*
 * One deflate block through ISA-L's igzip, for the pigz-style gzip writer (see isal.rs).
 *
 * A thin layer so that Rust never mirrors `struct isal_zstream`: its internal state is a large
 * struct whose layout depends on the headers' build options, and the C compiler is the only
 * party that reliably knows it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <isa-l/igzip_lib.h>

/* Return codes besides a byte count (>= 0). */
#define OE_ISAL_OUT_TOO_SMALL (-1)
#define OE_ISAL_FAILED (-2)

struct oe_isal {
	struct isal_zstream stream;
	uint32_t level;
	uint32_t level_buf_size;
	uint8_t *level_buf;
};

static int level_buf_size(uint32_t level, uint32_t *size)
{
	switch (level) {
	case 0:
		*size = ISAL_DEF_LVL0_DEFAULT;
		return 0;
	case 1:
		*size = ISAL_DEF_LVL1_DEFAULT;
		return 0;
	case 2:
		*size = ISAL_DEF_LVL2_DEFAULT;
		return 0;
	case 3:
		*size = ISAL_DEF_LVL3_DEFAULT;
		return 0;
	}
	return -1;
}

/* A compressor for `level` (0..=3), or NULL for a bad level or no memory. */
struct oe_isal *oe_isal_new(uint32_t level)
{
	uint32_t size;
	if (level_buf_size(level, &size) != 0)
		return NULL;
	struct oe_isal *c = calloc(1, sizeof *c);
	if (c == NULL)
		return NULL;
	c->level = level;
	c->level_buf_size = size;
	if (size > 0) {
		c->level_buf = calloc(1, size);
		if (c->level_buf == NULL) {
			free(c);
			return NULL;
		}
	}
	return c;
}

void oe_isal_free(struct oe_isal *c)
{
	if (c == NULL)
		return;
	free(c->level_buf);
	free(c);
}

/*
 * Compresses `in` as raw deflate into `out`, primed with `dict` (may be empty). Ends with a
 * sync flush (an empty stored block, byte-aligned), or ends the deflate stream when `last`.
 *
 * The stream is initialised afresh for every block, so the result depends on the arguments
 * alone, never on what this compressor did before. Returns the compressed length, or
 * OE_ISAL_OUT_TOO_SMALL if `out_cap` did not hold it all, or OE_ISAL_FAILED.
 */
int64_t oe_isal_deflate_block(struct oe_isal *c, const uint8_t *dict, uint32_t dict_len,
			      const uint8_t *in, uint32_t in_len, int last, uint8_t *out,
			      uint32_t out_cap)
{
	struct isal_zstream *s = &c->stream;

	isal_deflate_init(s);
	s->level = c->level;
	s->level_buf = c->level_buf;
	s->level_buf_size = c->level_buf_size;
	s->gzip_flag = IGZIP_DEFLATE;
	s->hist_bits = 0; /* the full 32 KiB window, as zlib */
	s->end_of_stream = last ? 1 : 0;
	s->flush = last ? NO_FLUSH : SYNC_FLUSH;

	/* ISA-L takes non-const pointers but only reads the input and the dictionary. */
	if (dict_len > 0 && isal_deflate_set_dict(s, (uint8_t *)dict, dict_len) != COMP_OK)
		return OE_ISAL_FAILED;

	s->next_in = (uint8_t *)in;
	s->avail_in = in_len;
	s->next_out = out;
	s->avail_out = out_cap;
	if (isal_deflate(s) != COMP_OK)
		return OE_ISAL_FAILED;

	/* Done means: all input taken, and the flush or the stream's end fully written. */
	int done = s->avail_in == 0 && (last ? s->internal_state.state == ZSTATE_END
					     : s->internal_state.state == ZSTATE_NEW_HDR);
	if (!done)
		return OE_ISAL_OUT_TOO_SMALL;
	return (int64_t)s->total_out;
}
