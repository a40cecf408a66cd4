"""Built-in text for threshold calibration: a mix of the kinds of text the models meet (prose, instructions,
dialogue, code, worked arithmetic, lists), written for this project so it ships with the package. Each entry
is evaluated as its own sequence (after BOS); calibration uses the first entries and reports the density it
reaches on the last ones (held out)."""

PASSAGES = (
    # prose: history
    """The printing press changed Europe more quickly than almost any invention before it. Within fifty years
of the first printed Bible, presses were running in more than two hundred cities, and millions of books had
been produced. Scholars could compare identical copies of a text for the first time, which made it easier to
correct errors and argue about details. Merchants printed price lists and maps, governments printed laws, and
reformers printed pamphlets that spread arguments faster than any authority could answer them. Historians
still debate how much the press caused these changes and how much it only sped up trends that had already
begun, but nobody doubts that the cost of copying words fell by a factor of hundreds.""",
    # prose: science
    """Plants turn light into chemical energy through photosynthesis. Inside the chloroplasts, chlorophyll
absorbs mostly red and blue light and reflects green, which is why leaves look green to us. The energy of the
absorbed light splits water molecules, releasing oxygen as a by-product, and the freed electrons drive a chain
of reactions that store energy in two carrier molecules. In a second stage, often called the Calvin cycle, an
enzyme named RuBisCO fixes carbon dioxide from the air into sugars. RuBisCO is slow and sometimes grabs oxygen
by mistake, so plants make enormous amounts of it: it may be the most abundant protein on Earth.""",
    # instructions
    """How to replace a bicycle inner tube:
1. Shift to the smallest rear cog, open the brake if needed, and remove the wheel.
2. Let out any remaining air, then push the tyre bead toward the centre of the rim all the way around.
3. Hook a tyre lever under the bead opposite the valve and pull it over the rim; slide a second lever along
   until one side of the tyre is free.
4. Pull out the old tube and run your fingers carefully around the inside of the tyre to find the thorn or
   glass that caused the puncture.
5. Put a little air in the new tube so it holds its shape, insert the valve, and tuck the tube into the tyre.
6. Push the bead back over the rim with your thumbs, finishing at the valve, and check that the tube is not
   pinched anywhere before inflating to the pressure printed on the sidewall.""",
    # dialogue
    """Customer: Hi, I ordered a blue backpack last week but the one that arrived is grey.
Agent: I'm sorry about that! Could you tell me your order number so I can look into it?
Customer: Sure, it's 48213.
Agent: Thank you. I can see the order was for the blue one, so this was our mistake. I can send the right
colour today with express shipping, and I'll email you a prepaid label for returning the grey backpack.
Customer: That would be great. Do I need to return it before the new one arrives?
Agent: No, take your time. The label is valid for thirty days. Is there anything else I can help you with?
Customer: No, that's everything. Thanks for sorting it out so quickly.
Agent: You're welcome, and have a nice day!""",
    # code
    '''def merge_intervals(intervals):
    """Merge overlapping [start, end] intervals and return them sorted."""
    if not intervals:
        return []
    intervals = sorted(intervals, key=lambda pair: pair[0])
    merged = [list(intervals[0])]
    for start, end in intervals[1:]:
        last = merged[-1]
        if start <= last[1]:
            last[1] = max(last[1], end)
        else:
            merged.append([start, end])
    return merged


class LRUCache:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.items = {}

    def get(self, key):
        if key not in self.items:
            return -1
        value = self.items.pop(key)
        self.items[key] = value
        return value

    def put(self, key, value):
        self.items.pop(key, None)
        if len(self.items) >= self.capacity:
            oldest = next(iter(self.items))
            del self.items[oldest]
        self.items[key] = value''',
    # worked arithmetic
    """Q: A baker makes 24 muffins in each batch. She bakes 7 batches on Saturday and sells all but 19 muffins.
How many muffins does she sell?
A: She bakes 24 * 7 = 168 muffins. She sells 168 - 19 = 149 muffins. The answer is 149.

Q: Tom reads 35 pages a day. His book has 420 pages and he has already read 105 of them. How many more days
does he need to finish it?
A: He has 420 - 105 = 315 pages left. At 35 pages a day that takes 315 / 35 = 9 days. The answer is 9.

Q: A train ticket costs $12 for adults and $7 for children. A family buys 2 adult tickets and 3 child
tickets and pays with a $50 bill. How much change do they get?
A: The adult tickets cost 2 * 12 = 24 dollars and the child tickets 3 * 7 = 21 dollars, 45 dollars in all.
The change is 50 - 45 = 5 dollars. The answer is 5.""",
    # list / facts
    """Planets of the solar system, in order from the Sun, with a fact about each:
- Mercury: the smallest planet; a year there lasts 88 Earth days.
- Venus: the hottest planet, because its thick carbon dioxide atmosphere traps heat.
- Earth: the only planet known to have liquid water on its surface and life.
- Mars: home to Olympus Mons, the tallest volcano in the solar system.
- Jupiter: so large that more than a thousand Earths would fit inside it.
- Saturn: its rings are made mostly of ice, with some rock and dust.
- Uranus: it rotates on its side, probably after an ancient collision.
- Neptune: the windiest planet, with storms faster than 2,000 kilometres per hour.""",
    # prose: explanation
    """When you type a web address and press enter, your computer first needs the server's numeric address. It
asks a DNS resolver, which may already have the answer cached or may ask other servers in turn. With the
address known, the browser opens a connection, usually encrypted with TLS: the two sides agree on keys, and
the server proves its identity with a certificate signed by an authority the browser trusts. Then the browser
sends an HTTP request naming the page it wants, and the server replies with a status code, headers and the
page itself. The browser parses the HTML, discovers images, scripts and style sheets, requests them too, and
finally lays out and paints the page on the screen, often in well under a second.""",
    # held out from here on (see HELD_OUT)
    """Memory in a computer is arranged as a hierarchy. Registers inside the processor hold a few values and
answer in a fraction of a nanosecond. Caches hold recently used data close to the cores: a small first level,
a larger second level, and often a third level shared by all cores. Main memory is far larger but a hundred
times slower to reach, and storage is slower still. Programs run fast when the data they need next is already
near the top of this hierarchy, which is why reading an array in order beats jumping around in it, and why
the size of a working set often matters more than the number of operations.""",
    """Q: A garden has 6 rows of tomato plants with 14 plants in each row. Each plant gives 9 tomatoes. How many
tomatoes does the garden give?
A: There are 6 * 14 = 84 plants. They give 84 * 9 = 756 tomatoes. The answer is 756.

def count_words(text):
    counts = {}
    for word in text.lower().split():
        word = word.strip(".,!?;:")
        if word:
            counts[word] = counts.get(word, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))""",
)

#: Passages used to calibrate, and those held out to report the density reached on unseen text.
HELD_OUT = 2
CALIBRATION = PASSAGES[:-HELD_OUT]
HELD_OUT_PASSAGES = PASSAGES[-HELD_OUT:]
