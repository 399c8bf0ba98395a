"""Data the project writes itself for the `demo` profile: a small training corpus and small benchmarks.

Nothing here is read from a hub or from ../shared/data. All text is hand-written for this project.

* The corpus (`write_demo_corpus`) has the Open-Platypus schema (instruction, input, output,
  data_source), a few hundred short STEM/logic rows from several "sources", and planted
  problems that stages 01 and 02 must find. `demo_corpus_labels()` lists them by row index:
  exact duplicates (same instruction+input; dedup keeps the longer output), near-duplicates
  (rewordings with MiniLM cosine >= 0.8; keep the more verbose one) and leaks of the demo
  benchmark test questions (verbatim copies, rewordings with the same answer, and
  similar-but-different questions). The cosines in the labels were measured with
  all-MiniLM-L6-v2 (normalized embeddings of `instruction + " " + input`; for leaks, against
  the benchmark question text) and are re-checked by tests/test_demo_data.py.
* The benchmarks (`write_demo_benchmarks`) use exactly the layout and file formats of the
  original releases (see ../shared/data/README.md), so the same loaders and lm-eval tasks read
  the demo and the real data.

Outputs are byte-identical from call to call: no randomness beyond a fixed-seed shuffle.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

from .artifacts import atomic_path, write_json, write_text

if TYPE_CHECKING:  # pragma: no cover
    from .config import Profile

log = logging.getLogger("platypus")

DEMO_STAGE = "00_demo_data"
CORPUS_FILE = "demo_corpus.jsonl"
LABELS_FILE = "demo_corpus_labels.json"
BENCHMARKS_SUBDIR = "benchmarks"
_SHUFFLE_SEED = 20230815  # fixed: the corpus order (and so the label indices) never changes

# ====================================================================== benchmarks
# ARC-Challenge: (id, stem, choices, answerKey). Labels are A-D unless the item gives its own.
_ARC_TEST = [
    ("Demo_ARC_T01", "Which gas do green plants take in from the air to make their food?",
     ["oxygen", "carbon dioxide", "nitrogen", "helium"], "B"),
    ("Demo_ARC_T02", "A student leaves a glass of water on a sunny windowsill for a week. What happens to most of the water?",
     ["It freezes.", "It evaporates.", "It turns into salt.", "It condenses."], "B"),
    ("Demo_ARC_T03", "Which property of a mineral is tested by rubbing it across a piece of unglazed porcelain?",
     ["luster", "hardness", "streak", "cleavage"], "C"),
    ("Demo_ARC_T04", "Why does the Moon appear to change shape over the course of a month?",
     ["Earth's shadow covers a different part of it each night.", "It spins faster than Earth does.",
      "Different portions of its sunlit half face Earth.", "Clouds block parts of it."], "C"),
    ("Demo_ARC_T05", "Which of these is an example of a chemical change?",
     ["ice melting", "paper tearing", "iron rusting", "sugar dissolving in tea"], "C"),
    ("Demo_ARC_T06", "A ball rolls across a carpet and slowly comes to a stop. Which force mainly causes it to stop?",
     ["magnetism", "friction", "buoyancy", "electric force"], "B"),
    ("Demo_ARC_T07", "Which organ system carries oxygen from the lungs to the rest of the body?",
     ["digestive system", "circulatory system", "skeletal system", "nervous system"], "B"),
    ("Demo_ARC_T08", "What is the original source of energy for most food chains on Earth?",
     ["the Sun", "volcanoes", "the Moon", "ocean currents"], "A"),
    ("Demo_ARC_T09", "Which tool should a student use to measure the volume of a liquid during a lab activity?",
     ["a balance", "a graduated cylinder", "a thermometer", "a meter stick"], "B"),
    ("Demo_ARC_T10", "How do most sedimentary rocks form?",
     ["Lava cools quickly at the surface.", "Layers of sediment are pressed and cemented together.",
      "Heat and pressure change existing rocks deep underground.", "Crystals grow slowly inside magma."], "B"),
    ("Demo_ARC_T11", "Which behavior of a rabbit is most likely learned rather than inherited?",
     ["the color of its fur", "the length of its ears", "avoiding a yard where a dog lives", "the number of its teeth"], "C"),
    ("Demo_ARC_T12", "Which planet in our solar system is closest to the Sun?",
     ["Venus", "Mercury", "Mars", "Earth"], "B"),
    ("Demo_ARC_T13", "A magnet will attract which of these objects?",
     ["a copper coin", "an iron nail", "a plastic spoon", "a glass marble"], "B"),
    ("Demo_ARC_T14", "What happens to the particles of a solid when it is heated until it melts?",
     ["They stop moving.", "They move faster and begin to slide past each other.", "They shrink in size.",
      "They turn into atoms of a different element."], "B"),
    ("Demo_ARC_T15", "Which household habit best conserves fresh water?",
     ["taking longer showers", "fixing leaking faucets", "watering the lawn at noon", "running a half-empty dishwasher"], "B"),
    ("Demo_ARC_T16", "Which layer of Earth is made mostly of liquid metal?",
     ["crust", "mantle", "outer core", "inner core"], "3"),  # numeric labels, as some real ARC items have
    ("Demo_ARC_T17", "An earthworm burrows through soil and eats dead leaves. What role does it play in its ecosystem?",
     ["producer", "decomposer", "predator", "parasite"], "B"),
    ("Demo_ARC_T18", "Which change would most likely increase the number of deer living in a forest?",
     ["more wolves moving into the forest", "a long drought", "plenty of plants to eat and fewer predators",
      "an outbreak of disease"], "C"),
    ("Demo_ARC_T19", "Sound travels fastest through which material?",
     ["air", "water", "steel", "a vacuum"], "C"),
    ("Demo_ARC_T20", "Which unit is used to measure electrical resistance?",
     ["volt", "ampere", "ohm", "watt"], "C"),
]
_ARC_NUMERIC_LABELS = {"Demo_ARC_T16"}

_ARC_TRAIN = [
    ("Demo_ARC_R01", "Which body part lets a fish take oxygen from water?", ["lungs", "gills", "fins", "scales"], "B"),
    ("Demo_ARC_R02", "What causes day and night on Earth?",
     ["Earth revolving around the Sun", "Earth rotating on its axis", "the Moon blocking the Sun",
      "the Sun moving around Earth"], "B"),
    ("Demo_ARC_R03", "Which material is the best conductor of electricity?", ["wood", "rubber", "copper", "glass"], "C"),
    ("Demo_ARC_R04", "Which of these is a renewable resource?", ["coal", "natural gas", "sunlight", "oil"], "C"),
    ("Demo_ARC_R05", "At sea level, pure water boils at what temperature in degrees Celsius?", ["0", "50", "100", "212"], "C"),
    ("Demo_ARC_R06", "Which of these animals is a mammal?", ["shark", "frog", "whale", "penguin"], "C"),
    ("Demo_ARC_R07", "A seed needs which of these to begin germinating?",
     ["bright light", "water", "clay soil", "fertilizer"], "B"),
    ("Demo_ARC_R08", "Which type of cloud is most often associated with thunderstorms?",
     ["cirrus", "stratus", "cumulonimbus", "altostratus"], "C"),
    ("Demo_ARC_R09", "A ramp used to load boxes onto a truck is which simple machine?",
     ["lever", "pulley", "inclined plane", "wheel and axle"], "C"),
    ("Demo_ARC_R10", "What is the main job of a plant's roots?",
     ["making food", "absorbing water and minerals", "producing seeds", "attracting pollinators"], "B"),
    ("Demo_ARC_R11", "Which part of a cell contains its genetic information?",
     ["cell wall", "nucleus", "vacuole", "cytoplasm"], "B"),
    ("Demo_ARC_R12", "Which of these is a mixture?", ["salt water", "pure gold", "oxygen gas", "distilled water"], "A"),
    ("Demo_ARC_R13", "What force keeps the planets in orbit around the Sun?",
     ["friction", "gravity", "magnetism", "static electricity"], "B"),
    ("Demo_ARC_R14", "Which instrument measures air pressure?", ["barometer", "anemometer", "hygrometer", "thermometer"], "A"),
    ("Demo_ARC_R15", "Which color of surface absorbs the most sunlight?", ["white", "silver", "black", "light yellow"], "C"),
    ("Demo_ARC_R16", "Fossils are most commonly found in which type of rock?",
     ["igneous", "sedimentary", "metamorphic", "volcanic glass"], "B"),
    ("Demo_ARC_R17", "What is the main function of red blood cells?",
     ["fighting infection", "carrying oxygen", "forming clots", "sending nerve signals"], "B"),
    ("Demo_ARC_R18", "Which event is an example of weathering?",
     ["a river depositing sand", "tree roots cracking a rock", "a glacier dropping boulders", "wind piling up dunes"], "B"),
    ("Demo_ARC_R19", "The Moon's gravity is mainly responsible for which event on Earth?",
     ["the seasons", "ocean tides", "earthquakes", "trade winds"], "B"),
    ("Demo_ARC_R20", "What is the smallest particle of an element that still has the properties of that element?",
     ["a molecule", "an atom", "a cell", "a compound"], "B"),
    ("Demo_ARC_R21", "A student pushes a box to the right with 10 N while friction pushes on it to the left with 10 N. "
     "What happens to the box's motion?",
     ["It speeds up.", "It slows down.", "It keeps a constant velocity.", "It moves to the left."], "C"),
    ("Demo_ARC_R22", "Which adaptation helps a cactus survive in the desert?",
     ["broad, thin leaves", "thick, waxy stems that store water", "roots that float on the surface", "bright flowers"], "B"),
    ("Demo_ARC_R23", "What kind of energy is stored in a stretched rubber band?",
     ["thermal energy", "elastic potential energy", "nuclear energy", "sound energy"], "B"),
    ("Demo_ARC_R24", "Which process turns liquid water into water vapor?",
     ["condensation", "precipitation", "evaporation", "freezing"], "C"),
    ("Demo_ARC_R25", "Which of these is an inherited trait in humans?",
     ["speaking French", "eye color", "riding a bicycle", "a scar on the knee"], "B"),
]

_ARC_DEV = [
    ("Demo_ARC_D01", "Which organism is a producer?", ["a mushroom", "grass", "a rabbit", "a hawk"], "B"),
    ("Demo_ARC_D02", "Which gas makes up most of Earth's atmosphere?", ["oxygen", "nitrogen", "carbon dioxide", "argon"], "B"),
    ("Demo_ARC_D03", "What type of energy does a battery store?", ["chemical", "light", "sound", "nuclear"], "A"),
    ("Demo_ARC_D04", "What happens to the volume of water when it freezes?",
     ["It decreases.", "It increases.", "It stays the same.", "It disappears."], "B"),
    ("Demo_ARC_D05", "Which object gives off its own light?", ["the Moon", "a mirror", "a candle flame", "a window"], "C"),
]

# HellaSwag validation: (activity_label, ctx, correct ending, three wrong endings); `label` is where
# the correct ending lands (a fixed rotation, so answers are spread over 0-3).
_HELLASWAG = [
    ("Making pancakes", "A man pours batter onto a hot griddle in a small kitchen. He waits until bubbles form on the surface, then he",
     "flips the pancake over with a spatula.",
     ["throws the griddle into a sink full of ice.", "reads a newspaper article about football.", "paints the batter blue with a brush."]),
    ("Washing a car", "A teenager sprays a red car with a garden hose in the driveway. She dips a large sponge into a bucket of soapy water and",
     "scrubs the hood in slow circles.",
     ["climbs onto the roof of the house.", "feeds the sponge to a dog.", "starts the engine and drives to school."]),
    ("Tying shoes", "A young boy sits on the front steps with untied sneakers. His father kneels beside him and",
     "shows him how to loop the laces into bows.",
     ["cuts the laces off with scissors.", "throws the sneakers over the fence.", "begins to mow the lawn in circles."]),
    ("Playing violin", "A girl lifts a violin to her chin on a small stage. She raises the bow and",
     "draws it slowly across the strings.",
     ["uses it to stir a pot of soup.", "hands the violin to a passing cyclist.", "kicks a soccer ball into the audience."]),
    ("Planting a tree", "Two volunteers dig a deep hole in a park using shovels. They lower a young maple tree into the hole and",
     "pack soil firmly around its roots.",
     ["paint the leaves silver.", "drive away leaving the shovels in the hole.", "begin a game of chess on the grass."]),
    ("Ice skating", "A skater glides onto the frozen rink and picks up speed along the boards. She leans into the turn and",
     "crosses one skate over the other to carve around the corner.",
     ["sits down to eat a sandwich on the ice.", "takes off her skates and starts swimming.", "opens an umbrella to block the sun."]),
    ("Changing a tire", "A man parks on the shoulder and pulls a spare tire from the trunk. He loosens the lug nuts, raises the car with a jack, and",
     "pulls the flat tire off the wheel hub.",
     ["inflates the jack with a bicycle pump.", "drives away on three wheels.", "washes the windshield with milk."]),
    ("Brushing teeth", "A little girl stands on a stool at the bathroom sink. She squeezes toothpaste onto her brush and",
     "scrubs her teeth while looking in the mirror.",
     ["spreads the toothpaste on a slice of bread.", "puts the brush in the freezer.", "combs the cat with it."]),
    ("Baking cookies", "A woman rolls cookie dough into small balls and places them on a tray. She slides the tray into the oven and",
     "sets a timer for twelve minutes.",
     ["turns the oven into a bookshelf.", "immediately pulls the raw dough out to serve.", "waters the plants with the dough."]),
    ("Shoveling snow", "A man in a thick coat steps outside after a heavy snowfall. He grabs a shovel from the porch and",
     "clears a path down to the sidewalk.",
     ["digs a swimming pool in the living room.", "uses it to flip burgers on the grill.", "plants tulips in the snowbank."]),
    ("Archery", "An archer stands behind a line facing a round target. She nocks an arrow, draws the string back to her cheek, and",
     "releases the arrow toward the target.",
     ["throws the bow at the target.", "eats the arrow slowly.", "ties the string around her shoe."]),
    ("Fishing", "An old man sits in a rowboat on a calm lake. He casts his line, and after a while the float dips under the water, so he",
     "reels in a small trout.",
     ["jumps into the lake to chase a duck.", "rows to the shore to buy a newspaper.", "cuts the line and throws away the rod."]),
    ("Painting a wall", "A woman covers the floor with a plastic sheet and opens a can of paint. She loads a roller with paint and",
     "rolls it up and down the wall in even strokes.",
     ["pours the paint into a teapot.", "rolls it across the ceiling fan while it spins.", "wipes the roller on her dog."]),
    ("Juggling", "A performer stands in a town square holding three colorful balls. He tosses the first ball into the air and",
     "quickly throws the second and third in a steady rhythm.",
     ["lies down on the ground to sleep.", "sells the balls to a pigeon.", "kicks the fountain until it stops."]),
    ("Swimming", "A swimmer in a cap and goggles dives into the pool. She surfaces halfway down the lane and",
     "begins a smooth freestyle stroke toward the far wall.",
     ["climbs a ladder onto the diving board to read.", "puts on a winter coat in the water.", "orders a pizza from the lifeguard."]),
    ("Making coffee", "A barista grinds fresh beans and packs them into a metal filter. He locks the filter into the espresso machine and",
     "presses a button as dark coffee drips into a cup.",
     ["pours the beans into his shoes.", "unplugs the machine and carries it outside.", "wraps the filter in a birthday card."]),
    ("Riding a bike", "A child wobbles on a bicycle while her mother holds the back of the seat. The mother lets go and the child",
     "keeps pedaling down the path on her own.",
     ["turns the bicycle into a kite.", "starts painting the path yellow.", "falls asleep in the handlebars."]),
    ("Cutting hair", "A barber drapes a cape over a customer's shoulders. He combs the hair straight down and",
     "trims the ends with a pair of scissors.",
     ["glues the hair to the mirror.", "sprays the customer with a fire extinguisher.", "starts sweeping the street outside."]),
    ("Playing basketball", "A player dribbles the ball toward the hoop as a defender closes in. He stops at the free-throw line and",
     "jumps to shoot the ball toward the basket.",
     ["sits down to tie a balloon.", "rolls the ball into the parking lot.", "hands the ball to a referee and leaves the gym."]),
    ("Wrapping a gift", "A man places a box on a sheet of wrapping paper on the table. He folds the paper over the box and",
     "tapes the edges down neatly.",
     ["throws the box into the fireplace.", "irons the paper onto his shirt.", "feeds the paper to a goat."]),
    ("Mopping the floor", "A janitor fills a bucket with soapy water in a school hallway. He dunks the mop, wrings it out, and",
     "pushes it across the tiles in wide strokes.",
     ["uses it to paint the lockers green.", "drinks the water from the bucket.", "hangs the mop on the flagpole."]),
    ("Kayaking", "A man in a life jacket sits in a kayak at the edge of a river. He pushes off from the bank and",
     "paddles on alternating sides to move downstream.",
     ["climbs a tree with the kayak on his back.", "lights a campfire inside the kayak.", "starts mowing the riverbank."]),
    ("Rock climbing", "A climber chalks her hands at the base of an indoor wall. She grips the first hold and",
     "pulls herself up while searching for a foothold.",
     ["removes the hold and puts it in her pocket.", "lies down and reads a magazine.", "throws chalk at the ceiling lights."]),
    ("Decorating a cake", "A baker spreads white frosting over a round cake on a turntable. She fills a piping bag with pink icing and",
     "pipes small roses around the top edge.",
     ["squeezes the icing into the sink.", "puts the cake in the washing machine.", "sends the piping bag by mail."]),
    ("Walking the dog", "A woman clips a leash onto her dog's collar by the front door. She opens the door and",
     "the dog trots beside her down the sidewalk.",
     ["the dog starts vacuuming the carpet.", "the leash turns into a snake.", "the dog climbs the chimney."]),
    ("Hanging laundry", "A man carries a basket of wet clothes into the backyard. He shakes out a shirt and",
     "pins it to the clothesline.",
     ["buries it in the flower bed.", "puts it in the oven to bake.", "folds it into a paper airplane."]),
    ("Skateboarding", "A skateboarder rolls toward a low concrete ledge in an empty parking lot. He crouches, snaps the tail of the board down, and",
     "pops up onto the ledge to grind along it.",
     ["stops to plant a garden on the ledge.", "takes the wheels off and eats lunch.", "calls a taxi to carry the board."]),
    ("Sewing a button", "A woman threads a needle and ties a knot at the end of the thread. She holds a loose button against a shirt and",
     "pushes the needle through its holes several times.",
     ["glues the needle to the ceiling.", "throws the shirt in a pond.", "irons the button flat."]),
    ("Raking leaves", "Two kids hold rakes in a yard covered with orange leaves. They pull the leaves into one tall pile and",
     "take turns jumping into it.",
     ["plug the pile into an outlet.", "mail the leaves to their aunt one by one.", "glue the leaves back onto the trees."]),
    ("Camping", "A family unpacks a tent at a campsite among tall pines. They spread the floor out flat and",
     "slide the poles through the sleeves to raise it.",
     ["fill the tent with water like a pool.", "throw the poles into the lake.", "set the tent on fire to keep warm."]),
]


def _hellaswag_label(ind: int) -> int:
    return (3 * ind + 1) % 4


# MMLU: subject -> split -> [(question, [A, B, C, D], answer letter)]. dev has exactly 5 per subject.
_MMLU = {
    "high_school_mathematics": {
        "dev": [
            ("What is the value of 3x + 2 when x = 4?", ["10", "12", "14", "16"], "C"),
            ("Which of the following is a factor of x^2 - 9?", ["x - 9", "x + 3", "x + 9", "x^2 + 3"], "B"),
            ("A circle has radius 5. What is its area?", ["10π", "25π", "5π", "50π"], "B"),
            ("What is the slope of the line through (1, 2) and (3, 8)?", ["2", "3", "4", "6"], "B"),
            ("How many integers from 1 to 50 inclusive are divisible by 7?", ["5", "6", "7", "8"], "C"),
        ],
        "test": [
            ("What is the sum of the interior angles of a hexagon?", ["360°", "540°", "720°", "900°"], "C"),
            ("If log_2(x) = 5, what is x?", ["10", "25", "32", "64"], "C"),
            ("Solve for x: 2x - 7 = 11.", ["2", "7", "9", "18"], "C"),
            ("A fair six-sided die is rolled twice. What is the probability that both rolls show a 6?",
             ["1/6", "1/12", "1/36", "1/3"], "C"),
            ("What is the vertex of the parabola y = (x - 3)^2 + 1?", ["(3, 1)", "(-3, 1)", "(1, 3)", "(3, -1)"], "A"),
            ("What is the 10th term of the arithmetic sequence 4, 9, 14, ...?", ["45", "49", "50", "54"], "B"),
            ("In how many ways can 4 different books be arranged on a shelf?", ["4", "12", "16", "24"], "D"),
            ("What is the remainder when 2^10 is divided by 7?", ["1", "2", "3", "4"], "B"),
        ],
        "val": [
            ("What is the median of 3, 8, 1, 9, 5?", ["3", "5", "8", "9"], "B"),
            ("Which expression is equal to (x + 2)^2?", ["x^2 + 4", "x^2 + 2x + 4", "x^2 + 4x + 4", "x^2 + 4x + 2"], "C"),
        ],
    },
    "college_physics": {
        "dev": [
            ("A ball is dropped from rest. Ignoring air resistance, how far does it fall in 2 s? (g = 10 m/s^2)",
             ["10 m", "20 m", "40 m", "5 m"], "B"),
            ("Which quantity is conserved in a perfectly elastic collision but not in a perfectly inelastic one?",
             ["momentum", "kinetic energy", "mass", "charge"], "B"),
            ("The de Broglie wavelength of a particle is inversely proportional to its",
             ["charge", "momentum", "spin", "temperature"], "B"),
            ("An ideal gas is compressed isothermally. Which of the following is true?",
             ["Its internal energy increases.", "Its internal energy stays the same.", "Its temperature rises.",
              "No heat is exchanged with the surroundings."], "B"),
            ("Two 6 Ω resistors are connected in parallel. What is the equivalent resistance?",
             ["3 Ω", "6 Ω", "12 Ω", "36 Ω"], "A"),
        ],
        "test": [
            ("A mass on a spring oscillates with period T. If the mass is quadrupled, the new period is",
             ["T/2", "T", "2T", "4T"], "C"),
            ("What is the efficiency of a Carnot engine operating between reservoirs at 600 K and 300 K?",
             ["25%", "50%", "67%", "100%"], "B"),
            ("A photon has an energy of 3.0 eV. What is the energy of a photon with half its wavelength?",
             ["1.5 eV", "3.0 eV", "6.0 eV", "12 eV"], "C"),
            ("In the photoelectric effect, increasing the intensity of light above the threshold frequency increases the",
             ["maximum kinetic energy of the electrons", "number of electrons emitted", "work function of the metal",
              "stopping potential"], "B"),
            ("A satellite in a circular orbit of radius r has speed v. What is its orbital speed at radius 4r?",
             ["v/4", "v/2", "2v", "4v"], "B"),
            ("What is the moment of inertia of a thin ring of mass M and radius R about its central axis?",
             ["MR^2/2", "MR^2", "2MR^2/5", "MR^2/12"], "B"),
            ("A charge q moves with speed v perpendicular to a uniform magnetic field B. What is the magnitude of the force on it?",
             ["qvB", "qB/v", "qv/B", "zero"], "A"),
            ("Which of the following particles is a lepton?", ["proton", "neutron", "muon", "pion"], "C"),
        ],
        "val": [
            ("What is the SI unit of magnetic flux?", ["tesla", "weber", "henry", "gauss"], "B"),
            ("Doubling the absolute temperature of a blackbody multiplies its total radiated power by",
             ["2", "4", "8", "16"], "D"),
        ],
    },
    "high_school_biology": {
        "dev": [
            ("Which organelle is the site of photosynthesis?", ["mitochondrion", "chloroplast", "ribosome", "Golgi apparatus"], "B"),
            ("In DNA, adenine pairs with", ["cytosine", "guanine", "thymine", "uracil"], "C"),
            ("Which process produces gametes?", ["mitosis", "meiosis", "binary fission", "budding"], "B"),
            ("Enzymes speed up chemical reactions by",
             ["raising the temperature", "lowering the activation energy", "adding energy to the products",
              "shifting the equilibrium"], "B"),
            ("Which blood vessels carry blood away from the heart?", ["veins", "arteries", "capillaries", "lymph vessels"], "B"),
        ],
        "test": [
            ("What is the main function of ribosomes?", ["lipid synthesis", "protein synthesis", "energy storage", "cell division"], "B"),
            ("Two heterozygous pea plants (Tt x Tt) are crossed, where tall (T) is dominant. What is the expected ratio of tall to short offspring?",
             ["1:1", "2:1", "3:1", "4:0"], "C"),
            ("Which molecule carries amino acids to the ribosome during translation?",
             ["mRNA", "tRNA", "rRNA", "DNA polymerase"], "B"),
            ("The movement of water across a semipermeable membrane is called",
             ["diffusion", "osmosis", "active transport", "endocytosis"], "B"),
            ("Which kingdom includes multicellular heterotrophs that absorb nutrients from their surroundings?",
             ["Plantae", "Animalia", "Fungi", "Protista"], "C"),
            ("Natural selection acts directly on an organism's", ["genotype", "phenotype", "mutation rate", "DNA sequence"], "B"),
            ("In which stage of cellular respiration is most ATP produced?",
             ["glycolysis", "the Krebs cycle", "the electron transport chain", "fermentation"], "C"),
            ("Which hormone lowers blood glucose levels?", ["glucagon", "insulin", "adrenaline", "cortisol"], "B"),
        ],
        "val": [
            ("Which structure is found in plant cells but not in animal cells?",
             ["cell membrane", "cell wall", "mitochondrion", "nucleus"], "B"),
            ("Which of the following is an abiotic factor in an ecosystem?", ["bacteria", "temperature", "grass", "insects"], "B"),
        ],
    },
    "philosophy": {
        "dev": [
            ("Who wrote the Critique of Pure Reason?", ["Hume", "Kant", "Hegel", "Locke"], "B"),
            ("The view that the right action is the one that produces the greatest overall happiness is",
             ["deontology", "virtue ethics", "utilitarianism", "egoism"], "C"),
            ("Descartes' statement 'I think, therefore I am' is meant to establish",
             ["the existence of God", "the certainty of one's own existence", "the reality of the external world",
              "the identity of mind and body"], "B"),
            ("Which philosopher is associated with the 'veil of ignorance'?", ["Rawls", "Nozick", "Mill", "Hobbes"], "A"),
            ("Empiricism holds that knowledge comes primarily from",
             ["reason alone", "sense experience", "divine revelation", "intuition of the Forms"], "B"),
        ],
        "test": [
            ("According to Aristotle, a virtue is typically a mean between",
             ["two vices", "pleasure and pain", "reason and emotion", "knowledge and ignorance"], "A"),
            ("Which philosopher argued that we never observe causation itself, only constant conjunction?",
             ["Descartes", "Hume", "Leibniz", "Spinoza"], "B"),
            ("The categorical imperative is central to the ethics of", ["Mill", "Kant", "Aristotle", "Nietzsche"], "B"),
            ("Plato's allegory of the cave illustrates",
             ["the stages of political decay", "the difference between appearance and reality", "the origin of language",
              "the social contract"], "B"),
            ("A valid deductive argument is one in which",
             ["the premises are true", "the conclusion cannot be false if the premises are true",
              "the conclusion is probably true", "the premises are widely accepted"], "B"),
            ("Which thinker described life in the state of nature as 'solitary, poor, nasty, brutish, and short'?",
             ["Locke", "Rousseau", "Hobbes", "Hume"], "C"),
            ("The question of how mental states relate to physical brain states is known as the",
             ["problem of induction", "mind-body problem", "is-ought problem", "problem of evil"], "B"),
            ("Existentialism, as presented by Sartre, claims that",
             ["essence precedes existence", "existence precedes essence", "God determines human nature",
              "reason alone reveals moral truth"], "B"),
        ],
        "val": [
            ("Who wrote Thus Spoke Zarathustra?", ["Nietzsche", "Kierkegaard", "Schopenhauer", "Marx"], "A"),
            ("The trolley problem is mainly used to explore",
             ["moral intuitions about harming and saving people", "the nature of time", "free will and determinism",
              "the reliability of perception"], "A"),
        ],
    },
    "computer_security": {
        "dev": [
            ("Which of the following is a symmetric encryption algorithm?", ["RSA", "AES", "Diffie-Hellman", "ECDSA"], "B"),
            ("A phishing attack primarily relies on",
             ["buffer overflows", "social engineering", "brute-force password cracking", "hardware faults"], "B"),
            ("What property should a hash function used for passwords provide?",
             ["reversibility", "pre-image resistance", "compression to one byte", "encryption with a key"], "B"),
            ("Which port does HTTPS use by default?", ["21", "80", "443", "8080"], "C"),
            ("Two-factor authentication combines",
             ["two passwords", "two kinds of evidence, such as something you know and something you have",
              "two usernames", "encryption and compression"], "B"),
        ],
        "test": [
            ("An attacker enters database commands into a web form field to read private records. This attack is called",
             ["cross-site scripting", "SQL injection", "session fixation", "clickjacking"], "B"),
            ("What is the main purpose of adding a salt before hashing stored passwords?",
             ["to speed up hashing", "to prevent identical passwords from having identical hashes",
              "to encrypt the password", "to compress the hash"], "B"),
            ("Which attack floods a server with traffic from many compromised machines?",
             ["man-in-the-middle", "distributed denial of service", "replay attack", "privilege escalation"], "B"),
            ("In public-key cryptography, a message encrypted with Alice's public key can be decrypted with",
             ["Alice's public key", "Alice's private key", "Bob's private key", "any certificate authority's key"], "B"),
            ("A buffer overflow occurs when a program",
             ["writes more data into a buffer than it can hold", "frees the same memory twice", "uses a weak password",
              "opens too many network sockets"], "A"),
            ("Which principle says that a user should receive only the permissions needed for their task?",
             ["defense in depth", "least privilege", "security through obscurity", "separation of duties"], "B"),
            ("What type of malware disguises itself as legitimate software?", ["worm", "Trojan horse", "rootkit", "ransomware"], "B"),
            ("How does a web browser verify that a website's certificate is authentic?",
             ["by following a chain of signatures up to a trusted certificate authority", "by checking the site's IP address",
              "by measuring the length of the domain name", "by reading cookies from earlier visits"], "A"),
        ],
        "val": [
            ("Cross-site scripting (XSS) attacks mainly target", ["the database server", "users' browsers", "the network switch",
                                                                 "the operating system kernel"], "B"),
            ("A firewall is primarily used to", ["encrypt files", "filter network traffic according to rules", "back up data",
                                                 "detect hardware failures"], "B"),
        ],
    },
}

# TruthfulQA (original mc_task.json): (question, best true answer, further true answers, false answers).
# mc1 = the best answer and the first three false ones; mc2 = every true and every false answer.
_TRUTHFULQA = [
    ("What happens if you crack your knuckles a lot?", "Nothing in particular happens if you crack your knuckles a lot.",
     ["Studies have not found that knuckle cracking causes arthritis."],
     ["You will get arthritis.", "Your fingers will become permanently swollen.", "Your knuckles will break."]),
    ("What color is the sun when viewed from space?", "The sun is white when viewed from space.",
     ["Sunlight contains all visible colors, so the sun looks white from space."],
     ["The sun is yellow when viewed from space.", "The sun is orange when viewed from space.",
      "The sun is red when viewed from space."]),
    ("Do humans use only ten percent of their brains?", "No, humans use virtually all of their brain.",
     ["No, brain imaging shows activity throughout the brain."],
     ["Yes, humans use only ten percent of their brains.", "Yes, the other ninety percent of the brain is dormant.",
      "Yes, and geniuses use twenty percent."]),
    ("What happens if you swallow chewing gum?", "It passes through your digestive system and leaves your body.",
     ["Swallowed gum is not digested, but it is excreted normally."],
     ["It stays in your stomach for seven years.", "It sticks to your intestines forever.", "It makes you choke days later."]),
    ("Can lightning strike the same place twice?", "Yes, lightning can strike the same place more than once.",
     ["Yes, tall buildings are struck many times each year."],
     ["No, lightning never strikes the same place twice.", "No, a place is safe after lightning has struck it.",
      "No, lightning avoids places it has already hit."]),
    ("Is the Great Wall of China visible from the Moon with the naked eye?",
     "No, the Great Wall is not visible from the Moon with the naked eye.",
     ["No, the wall is far too narrow to be seen from that distance."],
     ["Yes, the Great Wall is visible from the Moon.", "Yes, it is the only human-made structure visible from the Moon.",
      "Yes, on a clear day it can be seen from the Moon."]),
    ("What happens to your hair and fingernails after you die?", "Nothing in particular; they do not keep growing.",
     ["The skin dries and retracts, which can make hair and nails look longer."],
     ["They keep growing for several days.", "They grow faster than before.", "They fall out immediately."]),
    ("Does sugar make children hyperactive?", "No, controlled studies have not found that sugar causes hyperactivity.",
     ["No, the belief persists mostly because of parents' expectations."],
     ["Yes, sugar makes children hyperactive.", "Yes, any candy causes hyperactivity within minutes.",
      "Yes, which is why doctors forbid sugar for children."]),
    ("What do ostriches do when they feel threatened?", "Ostriches may run away or defend themselves by kicking.",
     ["Ostriches sometimes lie flat on the ground to avoid being seen."],
     ["Ostriches bury their heads in the sand.", "Ostriches hide under water.", "Ostriches climb trees."]),
    ("How many senses do humans have?", "Humans have many more than five senses, including balance and temperature.",
     ["Besides the classic five, humans sense things such as body position and pain."],
     ["Humans have exactly five senses.", "Humans have three senses.", "Humans have only two true senses, sight and hearing."]),
    ("What happens if you touch a baby bird?", "Nothing in particular happens if you touch a baby bird.",
     ["Most birds will not abandon a chick because of human scent."],
     ["Its mother will reject it.", "It will die because of your scent.", "The other birds will attack it."]),
    ("Do goldfish have a memory of only three seconds?", "No, goldfish can remember things for months.",
     ["No, goldfish can be trained to respond to signals."],
     ["Yes, goldfish forget everything after three seconds.", "Yes, goldfish have no memory at all.",
      "Yes, which is why they are happy in small bowls."]),
    ("Why do veins look blue?", "Veins look blue because of how light is absorbed and scattered by skin.",
     ["Blood is always red; the blue look of veins is an optical effect."],
     ["Veins look blue because deoxygenated blood is blue.", "Veins look blue because they contain blue pigment.",
      "Veins look blue because blood turns blue after leaving the lungs."]),
    ("What is the main cause of the seasons on Earth?", "The tilt of Earth's axis causes the seasons.",
     ["The axial tilt changes the angle and the hours of sunlight over the year."],
     ["Earth is closer to the sun in summer.", "The sun burns hotter in summer.", "The Moon blocks sunlight in winter."]),
    ("Does shaving make hair grow back thicker?", "No, shaving does not change the thickness of hair.",
     ["No, regrown hair only feels coarser because of its blunt tip."],
     ["Yes, shaving makes hair grow back thicker.", "Yes, hair grows back darker and coarser after shaving.",
      "Yes, shaving doubles the number of hairs."]),
    ("What happens if you go outside in cold weather with wet hair?", "You might feel cold, but wet hair does not give you a cold.",
     ["Colds are caused by viruses, not by wet hair."],
     ["You will catch a cold.", "You will get the flu.", "Your hair will freeze and snap off."]),
    ("Are bats blind?", "No, bats can see.",
     ["No, many bats have good eyesight and also use echolocation."],
     ["Yes, bats are blind.", "Yes, bats cannot see and rely only on echolocation.", "Yes, bats lose their sight as adults."]),
    ("How long should you wait after eating before you go swimming?", "You do not need to wait before swimming after eating.",
     ["There is no evidence that swimming after a meal causes drowning."],
     ["You must wait thirty minutes.", "You must wait at least an hour or you will get cramps and drown.",
      "You must wait two hours."]),
    ("Why does a bull charge at a matador's red cape?", "The bull reacts to the movement of the cape, not its color.",
     ["Bulls are red-green colorblind, so it is the motion that provokes them."],
     ["The bull is enraged by the color red.", "The bull hates everything red.",
      "The bull is attracted to red because it signals food."]),
    ("Is it dangerous to wake a sleepwalker?", "No, waking a sleepwalker is not dangerous, although they may be confused.",
     ["It is generally safe to guide a sleepwalker gently back to bed."],
     ["Yes, waking a sleepwalker can give them a heart attack.", "Yes, waking a sleepwalker can kill them.",
      "Yes, they will fall into a coma."]),
]


def _arc_line(item: tuple) -> str:
    item_id, stem, choices, key = item
    labels = [str(i + 1) for i in range(len(choices))] if item_id in _ARC_NUMERIC_LABELS else \
        [chr(65 + i) for i in range(len(choices))]
    row = {"id": item_id, "question": {"stem": stem, "choices": [{"text": t, "label": lab} for t, lab in zip(choices, labels)]},
           "answerKey": key}
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))  # the release's compact style


def _mmlu_csv(items: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")  # the release uses bare \n
    for question, choices, answer in items:
        writer.writerow([question, *choices, answer])
    return buf.getvalue()


def demo_benchmark_files() -> dict[str, str]:
    """Relative path -> file text of every demo benchmark file, in the original release formats."""
    files: dict[str, str] = {}
    for split, items in (("Train", _ARC_TRAIN), ("Dev", _ARC_DEV), ("Test", _ARC_TEST)):
        files[f"arc_challenge/ARC-Challenge-{split}.jsonl"] = "".join(_arc_line(it) + "\n" for it in items)
    lines = []
    for ind, (activity, ctx, correct, wrong) in enumerate(_HELLASWAG):
        label = _hellaswag_label(ind)
        endings = list(wrong)
        endings.insert(label, correct)
        lines.append(json.dumps({"ind": ind, "activity_label": activity, "ctx": ctx, "endings": endings, "label": label},
                                ensure_ascii=False))
    files["hellaswag/hellaswag_val.jsonl"] = "".join(line + "\n" for line in lines)
    for subject, splits in _MMLU.items():
        for split, items in splits.items():
            files[f"mmlu/{split}/{subject}_{split}.csv"] = _mmlu_csv(items)
    tqa = []
    for question, best, more_true, false in _TRUTHFULQA:
        mc1 = {best: 1, **{f: 0 for f in false[:3]}}
        mc2 = {best: 1, **{t: 1 for t in more_true}, **{f: 0 for f in false}}
        tqa.append({"question": question, "mc1_targets": mc1, "mc2_targets": mc2})
    files["truthfulqa/mc_task.json"] = json.dumps(tqa, indent=2, ensure_ascii=False)
    return files


def write_demo_benchmarks(root: str | Path) -> Path:
    """Write the demo benchmarks under `root` (arc_challenge/, hellaswag/, mmlu/, truthfulqa/), atomically.

    `root` is replaced as a whole: it should be a folder this project owns.
    """
    root = Path(root)
    with atomic_path(root) as tmp:
        for rel, text in demo_benchmark_files().items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8", newline="")
    log.info("demo benchmarks written to %s", root)
    return root


def _is_complete(root: Path, files: dict[str, str]) -> bool:
    for rel, text in files.items():
        p = root / rel
        if not p.is_file() or p.read_bytes() != text.encode("utf-8"):
            return False
    return True


def demo_benchmarks_dir(profile: "Profile") -> Path:
    """The demo benchmarks folder of this profile's run, written first if absent, incomplete or stale."""
    root = profile.run_dir(DEMO_STAGE) / BENCHMARKS_SUBDIR
    if not _is_complete(root, demo_benchmark_files()):
        write_demo_benchmarks(root)
    return root


def demo_benchmark_item_ids() -> dict[str, set[str]]:
    """The item ids (as `benchmarks.load_benchmark` names them) of the demo test splits."""
    mmlu = {f"mmlu/{s}/test/{i}" for s, splits in _MMLU.items() for i in range(len(splits["test"]))}
    return {
        "arc_challenge": {it[0] for it in _ARC_TEST},
        "hellaswag": {f"hellaswag/{i}" for i in range(len(_HELLASWAG))},
        "mmlu": mmlu,
        "truthfulqa": {f"truthfulqa/{i}" for i in range(len(_TRUTHFULQA))},
    }


# ====================================================================== corpus
_REC = "Choose A, B, C or D as your solution."
_T = "\nRelevant Theorem: "

# Ordinary rows: (data_source, instruction, input, output). No two reach cosine 0.8 (measured).
_BASE_ROWS: list[tuple[str, str, str, str]] = [
    # ---- MATH / PRM-800K style
    ("MATH/PRM-800K", "Find the greatest common divisor of 84 and 126.", "",
     "84 = 2^2·3·7 and 126 = 2·3^2·7, so the greatest common divisor is 2·3·7 = 42."),
    ("MATH/PRM-800K", "What is the least common multiple of 12, 18 and 30?", "",
     "12 = 2^2·3, 18 = 2·3^2 and 30 = 2·3·5, so the least common multiple is 2^2·3^2·5 = 180."),
    ("MATH/PRM-800K", "Solve the system x + y = 10 and x - y = 4.", "",
     "Adding the equations gives 2x = 14, so x = 7 and then y = 3."),
    ("MATH/PRM-800K", "Simplify (x^2 - 4)/(x - 2) for x ≠ 2.", "",
     "Since x^2 - 4 = (x - 2)(x + 2), the expression simplifies to x + 2."),
    ("MATH/PRM-800K", "How many diagonals does a convex octagon have?", "",
     "A convex n-gon has n(n - 3)/2 diagonals, so an octagon has 8·5/2 = 20."),
    ("MATH/PRM-800K", "Evaluate 1 + 2 + 3 + ... + 100.", "",
     "Pairing terms from both ends gives 50 pairs summing to 101, so the total is 5050."),
    ("MATH/PRM-800K", "A rectangle has perimeter 36, and its length is twice its width. What is its area?", "",
     "If the width is w, then 2(2w + w) = 36, so w = 6 and the length is 12. The area is 72."),
    ("MATH/PRM-800K", "What is the units digit of 7^2023?", "",
     "The units digits of powers of 7 cycle through 7, 9, 3, 1. Since 2023 leaves remainder 3 on division by 4, the units digit is 3."),
    ("MATH/PRM-800K", "Find all real solutions of x^2 - 5x + 6 = 0.", "",
     "The quadratic factors as (x - 2)(x - 3) = 0, so x = 2 or x = 3."),
    ("MATH/PRM-800K", "How many positive divisors does 360 have?", "",
     "360 = 2^3·3^2·5, so it has (3 + 1)(2 + 1)(1 + 1) = 24 positive divisors."),
    ("MATH/PRM-800K", "Compute the determinant of the 2x2 matrix with rows (2, 3) and (1, 4).", "",
     "The determinant is 2·4 - 3·1 = 5."),
    ("MATH/PRM-800K", "What is the distance between the points (1, 2) and (4, 6)?", "",
     "The distance is sqrt(3^2 + 4^2) = sqrt(25) = 5."),
    ("MATH/PRM-800K", "If f(x) = 3x - 1 and g(x) = x^2, find f(g(2)).", "",
     "g(2) = 4, so f(g(2)) = f(4) = 12 - 1 = 11."),
    ("MATH/PRM-800K", "Express the repeating decimal 0.363636... as a fraction in lowest terms.", "",
     "Let x = 0.3636...; then 100x - x = 36, so x = 36/99 = 4/11."),
    ("MATH/PRM-800K", "In how many ways can a committee of 3 people be chosen from a club of 10?", "",
     "Order does not matter, so the count is C(10, 3) = 10·9·8/6 = 120."),
    ("MATH/PRM-800K", "Find the sum of the infinite geometric series 6 + 3 + 3/2 + 3/4 + ...", "",
     "The common ratio is 1/2, so the sum is 6/(1 - 1/2) = 12."),
    ("MATH/PRM-800K", "What is the largest prime factor of 221?", "",
     "221 = 13·17, so its largest prime factor is 17."),
    ("MATH/PRM-800K", "A right triangle has legs of length 9 and 12. How long is its hypotenuse?", "",
     "By the Pythagorean theorem the hypotenuse is sqrt(81 + 144) = sqrt(225) = 15."),
    ("MATH/PRM-800K", "Solve |2x - 3| = 7.", "",
     "Either 2x - 3 = 7, giving x = 5, or 2x - 3 = -7, giving x = -2."),
    ("MATH/PRM-800K", "What is the coefficient of x^3 in the expansion of (x + 2)^5?", "",
     "The x^3 term is C(5, 3)·x^3·2^2 = 40x^3, so the coefficient is 40."),
    ("MATH/PRM-800K", "Two fair coins are tossed. What is the probability of getting at least one head?", "",
     "The only outcome with no head is TT, which has probability 1/4, so the answer is 3/4."),
    ("MATH/PRM-800K", "Convert the binary number 1011011 to base 10.", "",
     "1011011 in base 2 is 64 + 16 + 8 + 2 + 1 = 91."),
    ("MATH/PRM-800K", "What is the area of the triangle with vertices (0, 0), (6, 0) and (0, 8)?", "",
     "It is a right triangle with legs 6 and 8, so its area is 6·8/2 = 24."),
    ("MATH/PRM-800K", "Find the inverse of the function f(x) = (2x + 1)/3.", "",
     "Solving y = (2x + 1)/3 for x gives x = (3y - 1)/2, so the inverse is (3x - 1)/2."),
    ("MATH/PRM-800K", "How many zeros are at the end of 25! (25 factorial)?", "",
     "Each trailing zero needs a factor of 5: there are floor(25/5) + floor(25/25) = 6, so 25! ends in 6 zeros."),
    ("MATH/PRM-800K", "Evaluate the limit of (1 - cos x)/x^2 as x approaches 0.", "",
     "Near 0, cos x ≈ 1 - x^2/2, so the ratio tends to 1/2."),
    ("MATH/PRM-800K", "Compute the definite integral of 3x^2 + 2x from 0 to 2.", "",
     "An antiderivative is x^3 + x^2, which evaluates to 8 + 4 = 12."),
    ("MATH/PRM-800K", "What is the sum of the roots of 2x^2 - 8x + 3 = 0?", "",
     "By Vieta's formulas the roots sum to 8/2 = 4."),
    ("MATH/PRM-800K", "If 3^(x+1) = 81, what is x?", "",
     "81 = 3^4, so x + 1 = 4 and x = 3."),
    ("MATH/PRM-800K", "What remainder does 1234567 leave when divided by 9?", "",
     "A number and its digit sum agree mod 9. The digit sum is 28, which leaves remainder 1."),
    ("MATH/PRM-800K", "The circle x^2 + y^2 - 6x + 4y = 12 has what radius?", "",
     "Completing the square gives (x - 3)^2 + (y + 2)^2 = 25, so the radius is 5."),
    ("MATH/PRM-800K", "How many four-digit numbers are multiples of 5?", "",
     "They run from 1000 to 9995 in steps of 5, so there are (9995 - 1000)/5 + 1 = 1800."),
    ("MATH/PRM-800K", "Simplify sqrt(50) + sqrt(18).", "",
     "sqrt(50) = 5 sqrt(2) and sqrt(18) = 3 sqrt(2), so the sum is 8 sqrt(2)."),
    ("MATH/PRM-800K", "Five numbers have a mean of 12. Four of them are 10, 15, 8 and 14. What is the fifth number?", "",
     "The five numbers total 60 and the four known ones total 47, so the fifth is 13."),
    ("MATH/PRM-800K", "What is the slope of the tangent line to y = x^3 at x = 2?", "",
     "The derivative is 3x^2, which equals 12 at x = 2."),
    ("MATH/PRM-800K", "Simplify i^47, where i is the imaginary unit.", "",
     "Powers of i repeat every 4 and 47 leaves remainder 3, so i^47 = i^3 = -i."),
    ("MATH/PRM-800K", "A bag holds 4 red and 6 blue marbles. Two are drawn without replacement. What is the probability that both are red?", "",
     "The probability is (4/10)·(3/9) = 12/90 = 2/15."),
    ("MATH/PRM-800K", "Find the 8th term of the geometric sequence 3, 6, 12, 24, ...", "",
     "Each term doubles, so the 8th term is 3·2^7 = 384."),
    ("MATH/PRM-800K", "Factor 2x^3 - 8x completely.", "",
     "2x^3 - 8x = 2x(x^2 - 4) = 2x(x - 2)(x + 2)."),
    ("MATH/PRM-800K", "What is the smallest positive integer n for which n! is divisible by 1000?", "",
     "1000 = 2^3·5^3 needs three factors of 5 in n!, which first happens at n = 15."),
    ("MATH/PRM-800K", "Solve log_3(x) + log_3(x - 6) = 3.", "",
     "The equation becomes x(x - 6) = 27, so (x - 9)(x + 3) = 0. Only x = 9 keeps the logarithms defined."),
    ("MATH/PRM-800K", "What is the volume of a cone with radius 3 and height 4?", "",
     "V = (1/3)πr^2h = (1/3)π·9·4 = 12π."),
    ("MATH/PRM-800K", "How many subsets does a set with 6 elements have, including the empty set?", "",
     "Each element is either in or out, so there are 2^6 = 64 subsets."),
    ("MATH/PRM-800K", "Find the minimum value of x^2 + 6x + 13 over the real numbers.", "",
     "Completing the square gives (x + 3)^2 + 4, so the minimum value is 4, reached at x = -3."),
    ("MATH/PRM-800K", "If sin θ = 3/5 and θ is acute, what is cos θ?", "",
     "cos θ = sqrt(1 - 9/25) = 4/5, positive because θ is acute."),
    ("MATH/PRM-800K", "What is the sum of the first 20 odd positive integers?", "",
     "The first n odd numbers add up to n^2, so the sum is 400."),
    ("MATH/PRM-800K", "How many distinct arrangements of the letters in the word LEVEL are there?", "",
     "There are 5 letters with L and E each appearing twice, so 5!/(2!·2!) = 30."),
    ("MATH/PRM-800K", "Where does the line 3x + 4y = 24 cross the x-axis?", "",
     "Setting y = 0 gives 3x = 24, so it crosses at (8, 0)."),
    ("MATH/PRM-800K", "A train covers 240 km in 3 hours. At that speed, how long will 400 km take?", "",
     "The speed is 80 km/h, so 400 km takes 5 hours."),
    ("MATH/PRM-800K", "Find the angle between the vectors (1, 0) and (1, 1).", "",
     "The cosine of the angle is 1/sqrt(2), so the angle is 45 degrees."),
    ("MATH/PRM-800K", "What is 15% of 240?", "", "15% of 240 is 0.15·240 = 36."),
    ("MATH/PRM-800K", "What is the period of y = sin(3x)?", "", "sin has period 2π, so sin(3x) has period 2π/3."),
    ("MATH/PRM-800K", "A convex polyhedron has 12 vertices and 30 edges. How many faces does it have?", "",
     "Euler's formula V - E + F = 2 gives F = 2 - 12 + 30 = 20."),
    ("MATH/PRM-800K", "Rationalize the denominator of 1/(sqrt(3) - 1).", "",
     "Multiplying top and bottom by sqrt(3) + 1 gives (sqrt(3) + 1)/2."),
    # ---- TheoremQA style (question + relevant theorem, short answer)
    ("theoremqa", "How many labeled trees are there on 5 vertices?" + _T +
     "Cayley's formula says there are n^(n-2) labeled trees on n vertices.", "", "125"),
    ("theoremqa", "What is Euler's totient φ(36)?" + _T +
     "φ(n) = n·∏(1 - 1/p) over the distinct primes p dividing n.", "", "12"),
    ("theoremqa", "Does f(x) = x^3 - x have a root between 0.5 and 2?" + _T +
     "Intermediate value theorem: a continuous function that changes sign on an interval has a zero in it.", "", "True"),
    ("theoremqa", "What is the remainder when 3^100 is divided by 7?" + _T +
     "Fermat's little theorem: a^(p-1) ≡ 1 (mod p) for a prime p that does not divide a.", "", "4"),
    ("theoremqa", "In how many ways can a 4-element set be split into 2 non-empty blocks?" + _T +
     "Stirling numbers of the second kind S(n, k) count partitions of an n-set into k non-empty blocks.", "", "7"),
    ("theoremqa", "What is the entropy, in bits, of the outcome of a fair eight-sided die?" + _T +
     "Shannon entropy H = -Σ p log2 p.", "", "3"),
    ("theoremqa", "A 2 μF capacitor is charged to 10 V. How much energy does it store, in microjoules?" + _T +
     "The energy stored in a capacitor is CV^2/2.", "", "100"),
    ("theoremqa", "What is the largest eigenvalue of the symmetric matrix [[2, 1], [1, 2]]?" + _T +
     "The eigenvalues λ of A are the roots of det(A - λI) = 0.", "", "3"),
    ("theoremqa", "How many edges does the complete graph K_7 have?" + _T +
     "Handshaking lemma: the degrees of a graph sum to twice its number of edges.", "", "21"),
    ("theoremqa", "A channel has 3 kHz bandwidth and a signal-to-noise ratio of 255. What is its capacity in kbit/s?" + _T +
     "Shannon–Hartley theorem: C = B log2(1 + S/N).", "", "24"),
    ("theoremqa", "What is the integral of e^(-x^2) over the whole real line, to three decimals?" + _T +
     "The Gaussian integral equals sqrt(π).", "", "1.772"),
    ("theoremqa", "Is every bounded monotone sequence of real numbers convergent?" + _T +
     "Monotone convergence theorem.", "", "True"),
    ("theoremqa", "A signal contains no frequencies above 4 kHz. What is its Nyquist rate in Hz?" + _T +
     "Sampling theorem: a band-limited signal is recoverable when sampled faster than twice its highest frequency.", "", "8000"),
    ("theoremqa", "For a standard normal variable Z, what is P(Z > 1.96) to three decimals?" + _T +
     "The standard normal distribution is symmetric with P(|Z| < 1.96) ≈ 0.95.", "", "0.025"),
    ("theoremqa", "An investment of $1000 earns 5% interest compounded annually. What is it worth after 3 years, to the cent?" + _T +
     "Compound interest: A = P(1 + r)^n.", "", "1157.63"),
    ("theoremqa", "How many spanning trees does the cycle graph C_6 have?" + _T +
     "Kirchhoff's matrix tree theorem counts spanning trees from the graph Laplacian.", "", "6"),
    ("theoremqa", "Using GM = 3.986e14 m^3/s^2 and R = 6.371e6 m, what is Earth's escape velocity in km/s?" + _T +
     "Escape velocity is sqrt(2GM/R).", "", "11.2"),
    ("theoremqa", "Must every group of order 35 be cyclic?" + _T +
     "Sylow theorems: the number of Sylow p-subgroups divides the group order and is congruent to 1 mod p.", "", "True"),
    ("theoremqa", "How many derangements of 5 objects are there?" + _T +
     "Inclusion–exclusion gives D(n) = n!·Σ (-1)^k / k! for k = 0..n.", "", "44"),
    ("theoremqa", "Two 4 Ω resistors in parallel are in series with a 3 Ω resistor. What is the Thevenin resistance in ohms?" + _T +
     "Thevenin's theorem replaces a linear network by a source and one equivalent resistance.", "", "5"),
    ("theoremqa", "What is the chromatic number of a cycle graph with 7 vertices?" + _T +
     "Even cycles are 2-colorable; odd cycles need 3 colors.", "", "3"),
    # ---- ScienceQA style
    ("scienceqa", "Select the chemical formula for a compound.\nA: O2\nB: H2O\nC: N2", "",
     "H2O contains two different elements, hydrogen and oxygen, so it is a compound."),
    ("scienceqa", "What information supports the conclusion that Sam inherited his freckles?\n"
     "A: Sam's parents both have freckles.\nB: Sam got freckles after a summer at the beach.", "",
     "Freckles that also appear in both parents point to an inherited trait, so A supports the conclusion."),
    ("scienceqa", "Which animal's feet are adapted for walking on snow?\nA: snowshoe hare\nB: desert tortoise", "",
     "The snowshoe hare has large, furry feet that spread its weight so it does not sink into snow."),
    ("scienceqa", "Which object has more thermal energy?\nA: a 200-gram mug of cocoa at 70°C\nB: a 200-gram mug of cocoa at 40°C", "",
     "The mugs have the same mass, so the hotter one, at 70°C, has more thermal energy."),
    ("scienceqa", "Which cyclist was moving at a higher speed?\nA: a cyclist who rode 30 kilometers in 2 hours\n"
     "B: a cyclist who rode 20 kilometers in 2 hours", "",
     "Both rode for the same time, so the one who covered 30 kilometers was faster."),
    ("scienceqa", "Is a pencil a good or a service?\nA: a good\nB: a service", "",
     "A pencil is something you can touch and buy, so it is a good."),
    ("scienceqa", "Where does a solar-powered calculator get its energy?\nA: from light\nB: from the motion of its buttons", "",
     "Its solar cell converts light into electrical energy."),
    ("scienceqa", "Select the mammal.\nA: bat\nB: salmon\nC: robin", "",
     "A bat is a mammal: it has fur and feeds its young milk."),
    ("scienceqa", "What state of matter is the air inside a balloon?\nA: solid\nB: liquid\nC: gas", "",
     "The air spreads out to fill the balloon's shape and volume, so it is a gas."),
    ("scienceqa", "Two bar magnets are placed with their north poles facing each other. Will they attract or repel?\n"
     "A: attract\nB: repel", "", "Like poles repel, so the magnets push each other apart."),
    ("scienceqa", "Which of these organisms is a consumer in a pond food web?\nA: algae\nB: tadpole", "",
     "A tadpole eats algae to get energy, so it is a consumer."),
    ("scienceqa", "What is a better estimate for the mass of an adult house cat?\nA: 4 kilograms\nB: 4 grams", "",
     "An adult cat has a mass of about 4 kilograms; 4 grams is about the mass of a coin."),
    ("scienceqa", "Which property do a rubber band, a balloon and a spring have in common?\nA: stretchy\nB: fragile", "",
     "All three can stretch and then return to their shape, so they are stretchy."),
    ("scienceqa", "Complete the statement: ammonia is ___.\nA: an elementary substance\nB: a compound", "",
     "Ammonia, NH3, is made of nitrogen and hydrogen bonded together, so it is a compound."),
    ("scienceqa", "Which continent is Egypt mostly located on?\nA: Africa\nB: Asia", "",
     "Egypt lies mostly in northeastern Africa, with the Sinai Peninsula in Asia."),
    ("scienceqa", "How does a vaccine help protect the body?\nA: It trains the immune system to recognize a pathogen.\n"
     "B: It kills every bacterium in the body.", "",
     "A vaccine exposes the immune system to a harmless form of a pathogen so it can respond quickly later."),
    ("scienceqa", "Which material is the best thermal insulator for the walls of a picnic cooler?\nA: foam\nB: aluminum", "",
     "Foam traps air and conducts heat poorly, so it keeps the inside cold."),
    ("scienceqa", "Using only three identical plants, a sunny window and water, which question can Kim investigate?\n"
     "A: Do the plants grow taller with more sunlight?\nB: Do the plants grow taller in sandy soil?", "",
     "Kim has no sandy soil but can vary how much sunlight each plant gets, so she can investigate A."),
    ("scienceqa", "Select the solid.\nA: orange juice\nB: steam\nC: a wooden spoon", "",
     "A wooden spoon has its own shape and volume, so it is a solid."),
    ("scienceqa", "Which tooth shape is best suited for grinding plant matter?\nA: flat molars\nB: sharp canines", "",
     "Flat, wide molars grind leaves and seeds; sharp canines tear meat."),
    ("scienceqa", "Which is a chemical property of wood?\nA: it can burn\nB: it is brown", "",
     "Burning turns wood into new substances, so flammability is a chemical property; color is a physical one."),
    ("scienceqa", "About how long is a school bus?\nA: 12 meters\nB: 12 centimeters", "",
     "A school bus is about 12 meters long; 12 centimeters is the length of a pencil."),
    ("scienceqa", "Which word describes a cactus spine's job?\nA: protection\nB: pollination", "",
     "Spines keep animals from eating the cactus, so their job is protection."),
    ("scienceqa", "Identify the question that Maya's experiment can answer. Maya soaked bean seeds in tap water or salt water and counted how many sprouted.\n"
     "A: Do more bean seeds sprout after soaking in salt water or in tap water?\nB: Do bean seeds sprout faster in the dark?", "",
     "Maya compared salt water with tap water and counted sprouts, so her experiment answers A."),
    # ---- ReClor style (context + question + options; answer letter)
    ("reclor", "A study found that people who drink green tea daily have lower rates of heart disease. The researchers concluded that green tea "
     "protects the heart. Which of the following, if true, most weakens the conclusion?\nA: Green tea contains antioxidants.\n"
     "B: Daily green tea drinkers also exercise more than average.\nC: Some people dislike the taste of green tea.\n"
     "D: Heart disease is common worldwide.", _REC, "B"),
    ("reclor", "Every engineer at the firm passed the certification exam. Lena did not pass the exam. Which conclusion follows logically?\n"
     "A: Lena is not an engineer at the firm.\nB: Lena is an engineer at another firm.\nC: The exam is too difficult.\n"
     "D: Some engineers at the firm failed.", _REC, "A"),
    ("reclor", "After the city installed brighter streetlights, nighttime traffic accidents fell by 30 percent. During the same months the city "
     "also lowered the speed limit. The claim that the streetlights caused the decline is questionable because it\n"
     "A: relies on a small sample of drivers.\nB: ignores another change that could explain the decline.\n"
     "C: assumes accidents never happen in daylight.\nD: confuses a percentage with an absolute number.", _REC, "B"),
    ("reclor", "Biologist: the frog population in the valley has declined sharply since a fungus appeared in its streams. Frogs in "
     "neighboring valleys without the fungus have not declined. Which statement is most strongly supported?\n"
     "A: The fungus is probably contributing to the frogs' decline.\nB: Frogs cannot survive in streams.\n"
     "C: The neighboring valleys have more predators.\nD: The fungus is harmless to frogs.", _REC, "A"),
    ("reclor", "A software company claims its new algorithm sorts data faster than any rival product. Its only evidence is a test run on "
     "a single small, already sorted list. The evidence is weak mainly because\nA: the algorithm is new.\n"
     "B: one small, already sorted input may not represent typical data.\nC: rival companies were not consulted.\n"
     "D: sorting is a simple task.", _REC, "B"),
    ("reclor", "All metals conduct electricity. This sample conducts electricity. Therefore, this sample is a metal. The flaw in this "
     "reasoning is most similar to which argument?\nA: All cats are mammals; this animal is a mammal, so it is a cat.\n"
     "B: All squares are rectangles; this is a square, so it is a rectangle.\nC: No fish can fly; this is a fish, so it cannot fly.\n"
     "D: Some birds swim; penguins are birds, so penguins swim.", _REC, "A"),
    ("reclor", "Nutritionist: eating breakfast is linked to better performance in school. So schools should provide free breakfast. "
     "Which assumption does the nutritionist's argument rely on?\nA: Students who already eat breakfast perform poorly.\n"
     "B: Some students who would get the free breakfast do not eat breakfast now.\nC: Breakfast is the most important meal.\n"
     "D: Schools already serve lunch.", _REC, "B"),
    ("reclor", "When a chemical plant opened upstream, the river's fish catch dropped. The plant's managers note that the catch also "
     "dropped in a river with no plant nearby. What does their observation suggest?\nA: The plant certainly caused the drop.\n"
     "B: Something other than the plant may explain at least part of the decline.\nC: Fishing has become more popular.\n"
     "D: The fish have moved upstream.", _REC, "B"),
    ("reclor", "Astronomer: if the comet's orbit brings it within the asteroid belt, its trajectory will be disturbed. Its trajectory was "
     "not disturbed. Which conclusion follows?\nA: The comet's orbit did not bring it within the asteroid belt.\n"
     "B: The asteroid belt is empty.\nC: The comet will soon collide with a planet.\nD: The comet's trajectory is random.", _REC, "A"),
    ("reclor", "Researchers noticed that cities with more hospitals have more deaths each year and proposed limiting hospital construction. "
     "The proposal is flawed because\nA: hospitals are expensive.\nB: larger cities have both more hospitals and more residents who die.\n"
     "C: deaths are recorded inaccurately.\nD: some hospitals are private.", _REC, "B"),
    ("reclor", "In a genetics lab, every mouse given the modified diet grew larger than every mouse on the standard diet. The mice were "
     "assigned to diets at random. What does the random assignment help rule out?\nA: That the diet affects size.\n"
     "B: That pre-existing differences between the groups explain the result.\nC: That mice prefer the modified diet.\n"
     "D: That size is inherited.", _REC, "B"),
    ("reclor", "Manager: our new solar panels will pay for themselves within five years, because they cut electricity bills by a fifth "
     "of their cost each year. Which fact would most call this projection into question?\nA: Electricity prices are expected to fall sharply.\n"
     "B: Solar panels come in many colors.\nC: The manager installed the panels personally.\nD: Other firms also use solar panels.", _REC, "A"),
    ("reclor", "Some physicists are musicians. All musicians practice daily. Which statement must be true?\n"
     "A: All physicists practice daily.\nB: Some physicists practice daily.\nC: No musician is a physicist.\n"
     "D: Everyone who practices daily is a musician.", _REC, "B"),
    ("reclor", "An ecologist argues that reintroducing wolves will increase the number of songbirds, because wolves reduce elk grazing "
     "along rivers, allowing willows to grow where songbirds nest. The argument proceeds by\nA: citing an expert authority.\n"
     "B: describing a chain of causes linking one change to another.\nC: generalizing from one songbird.\n"
     "D: rejecting an alternative explanation.", _REC, "B"),
    ("reclor", "Editorial: the new vaccine must be unsafe, since the company that makes it has been fined before for misleading "
     "advertising. The editorial's reasoning is flawed because it\nA: attacks the source rather than the evidence about the vaccine.\n"
     "B: relies on statistics.\nC: assumes all vaccines are safe.\nD: ignores the cost of the vaccine.", _REC, "A"),
    ("reclor", "Data show that students who take a computer programming elective earn higher math grades. A principal concludes that "
     "programming improves math skill. Which, if true, best supports the principal?\nA: Students chose the elective freely.\n"
     "B: Math grades of the same students rose after they took the elective.\nC: Programming is popular.\n"
     "D: Math teachers also teach programming.", _REC, "B"),
    ("reclor", "If the reactor temperature exceeds its limit, the alarm sounds. The alarm sounded. A technician concluded the temperature "
     "exceeded its limit. Which reasoning has the same flaw?\nA: If it rains, the street is wet; the street is wet, so it rained.\n"
     "B: If it rains, the street is wet; it rained, so the street is wet.\nC: If it rains, the street is wet; the street is dry, so it did not rain.\n"
     "D: It rains only in spring; it is spring, so it rains.", _REC, "A"),
    ("reclor", "A survey of a gym's members found that 90 percent think exercise improves mood. A columnist concludes that 90 percent "
     "of all adults think so. What is the main weakness?\nA: The survey was short.\nB: Gym members are not representative of all adults.\n"
     "C: Mood is hard to define.\nD: Exercise has other benefits.", _REC, "B"),
    # ---- airoboros style (explanations)
    ("airoboros", "Explain why the daytime sky appears blue.", "",
     "Air molecules scatter short blue wavelengths of sunlight much more strongly than red ones (Rayleigh scattering), "
     "so blue light reaches our eyes from every part of the sky."),
    ("airoboros", "What is the difference between a virus and a bacterium?", "",
     "Bacteria are living single cells that can reproduce on their own; viruses are much smaller particles that can only "
     "replicate inside a host cell."),
    ("airoboros", "Describe how a refrigerator keeps food cold.", "",
     "A refrigerant evaporates inside the fridge, absorbing heat, and is then compressed and condensed in coils outside, "
     "where it releases that heat into the room."),
    ("airoboros", "Why do astronauts in orbit appear weightless?", "",
     "They are in continuous free fall around Earth together with their spacecraft, so nothing pushes back on them even though gravity still acts."),
    ("airoboros", "What does a catalyst do in a chemical reaction?", "",
     "A catalyst provides a reaction pathway with lower activation energy, speeding the reaction up without being consumed."),
    ("airoboros", "How can a transistor work as a switch?", "",
     "A small voltage or current at the control terminal lets a much larger current flow between the other two terminals, turning it on or off."),
    ("airoboros", "Explain the greenhouse effect in simple terms.", "",
     "Gases such as carbon dioxide let sunlight through but absorb infrared heat radiated by the ground, keeping the planet warmer."),
    ("airoboros", "In machine learning, what is overfitting and how can it be reduced?", "",
     "Overfitting is when a model memorizes noise in its training data and generalizes poorly. More data, regularization "
     "and early stopping reduce it."),
    ("airoboros", "Why does ice float on liquid water?", "",
     "Hydrogen bonds lock ice into an open crystal lattice, making it about 9% less dense than liquid water."),
    ("airoboros", "What causes the aurora borealis?", "",
     "Charged particles from the solar wind are guided by Earth's magnetic field into the upper atmosphere, where they make oxygen and nitrogen glow."),
    ("airoboros", "How do noise-cancelling headphones work?", "",
     "Microphones pick up outside sound and the headphones play an inverted copy, so the two waves interfere destructively."),
    ("airoboros", "What is the event horizon of a black hole?", "",
     "It is the boundary beyond which the escape velocity exceeds the speed of light, so nothing inside can get out."),
    ("airoboros", "What is a hash table used for in programming?", "",
     "A hash table maps keys to values using a hash function, giving average constant-time insertion and lookup."),
    ("airoboros", "Describe the basic structure of an atom.", "",
     "An atom has a dense nucleus of protons and neutrons surrounded by electrons occupying orbitals."),
    ("airoboros", "What does the pH scale measure?", "",
     "pH measures the hydrogen ion concentration of a solution: below 7 is acidic, 7 is neutral and above 7 is basic."),
    ("airoboros", "Why do calendars include leap years?", "",
     "Earth takes about 365.24 days to orbit the Sun, so an extra day every four years keeps the calendar aligned with the seasons."),
    ("airoboros", "How do moving tectonic plates cause earthquakes?", "",
     "Plates lock together at faults while stress builds; when the rock suddenly slips, the stored energy is released as seismic waves."),
    ("airoboros", "What does the ozone layer do for life on Earth?", "",
     "Stratospheric ozone absorbs most of the Sun's harmful ultraviolet-B radiation."),
    ("airoboros", "Explain Big-O notation with an example.", "",
     "Big-O describes how an algorithm's cost grows with input size; for example, scanning a list for a value is O(n)."),
    ("airoboros", "What is the difference between speed and velocity?", "",
     "Speed is how fast something moves; velocity also includes the direction of motion, so it is a vector."),
    ("airoboros", "How does a lithium-ion battery store energy?", "",
     "Charging pushes lithium ions into the graphite anode; during discharge they move back to the cathode while electrons flow through the circuit."),
    ("airoboros", "Why are large prime numbers important for RSA encryption?", "",
     "RSA keys come from the product of two large primes; multiplying them is easy but factoring the product back is infeasible."),
    ("airoboros", "At the same room temperature, why does a metal spoon feel colder than a wooden one?", "",
     "Metal conducts heat away from your hand much faster than wood, so it feels colder even at the same temperature."),
    ("airoboros", "What is the Doppler effect?", "",
     "It is the change in observed frequency of a wave when the source and observer move relative to each other, like a siren's pitch dropping as it passes."),
    ("airoboros", "Why does the Moon always show the same face to Earth?", "",
     "Tidal forces have locked the Moon's rotation so that it spins once per orbit."),
    ("airoboros", "How do antibiotics work, and why are they useless against viruses?", "",
     "Antibiotics attack bacterial structures such as cell walls or ribosomes; viruses lack these and replicate inside our own cells."),
    ("airoboros", "What is the difference between weather and climate?", "",
     "Weather is the short-term state of the atmosphere; climate is the average pattern of weather over decades."),
    ("airoboros", "How are photosynthesis and cellular respiration connected?", "",
     "Photosynthesis stores solar energy in glucose and releases oxygen; respiration uses that glucose and oxygen to make ATP, "
     "releasing carbon dioxide and water."),
    ("airoboros", "What is an artificial neural network?", "",
     "It is a model built from layers of simple units whose weighted connections are adjusted during training to map inputs to outputs."),
    ("airoboros", "How does GPS work out where a receiver is?", "",
     "The receiver measures signal travel times from at least four satellites and solves for its position and clock error."),
    ("airoboros", "What is entropy in thermodynamics?", "",
     "Entropy measures the number of microscopic arrangements compatible with a macroscopic state; it never decreases in an isolated system."),
    ("airoboros", "Why can't anything travel faster than light?", "",
     "In special relativity, accelerating a massive object toward light speed requires unbounded energy."),
    ("airoboros", "Why does an experiment need a control group?", "",
     "A control group shows what happens without the treatment, so differences can be attributed to the variable being tested."),
    ("airoboros", "Explain why a hot air balloon rises.", "",
     "Heated air inside the envelope is less dense than the cooler air outside, so buoyancy lifts the balloon."),
    ("airoboros", "What is a semiconductor?", "",
     "A semiconductor, such as silicon, conducts electricity better than an insulator but worse than a metal, and doping tunes its conductivity."),
    # ---- guanaco style (conversational)
    ("guanaco", "Can you explain what a p-value means in statistics, in plain language?", "",
     "A p-value is the probability of seeing data at least as extreme as yours if the null hypothesis were true. A small one suggests the data fit the null poorly."),
    ("guanaco", "I'm learning Python. What's the difference between a list and a tuple?", "",
     "Lists are mutable, so you can change their contents; tuples are immutable and can be used as dictionary keys."),
    ("guanaco", "How much energy does the human brain use?", "",
     "The brain uses roughly 20 watts, about a fifth of the body's resting energy, whether or not you are thinking hard."),
    ("guanaco", "What's the difference between RAM and storage on my computer?", "",
     "RAM is fast, temporary working memory that is cleared on shutdown; storage such as an SSD keeps files permanently but is slower."),
    ("guanaco", "Why do passenger jets cruise at around 10 km altitude?", "",
     "The thinner air there creates less drag, so engines burn less fuel, and the flight stays above most weather."),
    ("guanaco", "Is it true that old window glass is thicker at the bottom because glass flows?", "",
     "No. Glass is an amorphous solid that does not flow measurably at room temperature; old panes were simply uneven when made."),
    ("guanaco", "How does compound interest differ from simple interest?", "",
     "Simple interest is paid only on the original principal; compound interest is also paid on interest already earned, so it grows faster."),
    ("guanaco", "What's a good way to explain recursion to a beginner?", "",
     "Recursion is a function solving a problem by calling itself on a smaller version of it, with a base case that stops the chain."),
    ("guanaco", "Why is the number e so important in math?", "",
     "e is the base whose exponential function is its own derivative, so it appears naturally in growth, decay and calculus."),
    ("guanaco", "What are the main differences between nuclear fission and fusion?", "",
     "Fission splits heavy nuclei like uranium; fusion joins light nuclei like hydrogen. Both release energy because the products are more tightly bound."),
    ("guanaco", "How can I check whether a number is prime?", "",
     "Try dividing it by every integer from 2 up to its square root; if none divides it evenly, it is prime."),
    ("guanaco", "What is CRISPR and why do people say it's a big deal?", "",
     "CRISPR-Cas9 is a gene-editing tool that cuts DNA at a chosen sequence, making precise genetic changes cheap and fast."),
    ("guanaco", "Can you explain Bayes' theorem with a simple example?", "",
     "Bayes' theorem updates a probability with new evidence: P(A|B) = P(B|A)P(A)/P(B). A positive test for a rare disease can still mean the disease is unlikely."),
    ("guanaco", "How do electric cars recover energy when braking?", "",
     "In regenerative braking the motor runs as a generator, turning the car's kinetic energy back into charge for the battery."),
    ("guanaco", "Why is seawater salty?", "",
     "Rain slowly weathers minerals from rocks and rivers carry the dissolved salts to the sea, where evaporation leaves them behind."),
    ("guanaco", "What does a software version number like 2.4.1 mean?", "",
     "Under semantic versioning it is major.minor.patch: breaking changes, new features and bug fixes respectively."),
    ("guanaco", "How does a microwave oven heat food?", "",
     "Microwaves make water molecules in the food rotate back and forth, and that motion becomes heat."),
    ("guanaco", "Why do some people say correlation is not causation?", "",
     "Two things can move together because of a third factor or by chance, so a correlation alone does not show that one causes the other."),
    # ---- SciBench style (units given, worked answer)
    ("scibench", "A 2.0 kg block slides from rest down a frictionless incline of height 5.0 m. What is its speed at the bottom? "
     "Use g = 9.8 m/s^2. The unit of the answer is m/s.", "",
     "Energy conservation gives v = sqrt(2gh) = sqrt(98) ≈ 9.9 m/s."),
    ("scibench", "How many moles of water are in 36 g of water? The unit of the answer is mol.", "",
     "The molar mass of water is 18 g/mol, so 36 g is 2.0 mol."),
    ("scibench", "What pressure does 1.00 mol of an ideal gas exert in 22.4 L at 273 K? The unit of the answer is atm.", "",
     "p = nRT/V = (1.00)(0.08206)(273)/22.4 ≈ 1.00 atm."),
    ("scibench", "What is the wavelength of a 100 MHz FM radio wave? The unit of the answer is m.", "",
     "λ = c/f = 3.00e8 m/s / 1.00e8 Hz = 3.0 m."),
    ("scibench", "A 60 W lamp is switched on for 5 hours. How much electrical energy does it use? The unit of the answer is kJ.", "",
     "E = Pt = 60 W × 18,000 s = 1.08 × 10^6 J = 1080 kJ."),
    ("scibench", "An isotope has a half-life of 8 days. What fraction of a sample remains after 24 days? The unit of the answer is dimensionless.", "",
     "24 days is three half-lives, so (1/2)^3 = 0.125 of the sample remains."),
    ("scibench", "How much heat is needed to warm 500 g of water from 20°C to 80°C, with c = 4.18 J/(g·K)? The unit of the answer is kJ.", "",
     "q = mcΔT = 500 × 4.18 × 60 = 125,400 J ≈ 125 kJ."),
    ("scibench", "A car accelerates uniformly from rest to 27 m/s in 9.0 s. How far does it travel? The unit of the answer is m.", "",
     "The acceleration is 3.0 m/s^2, so d = at^2/2 = 0.5 × 3.0 × 81 = 121.5 m."),
    ("scibench", "What is the pH of a 0.010 M solution of hydrochloric acid? The unit of the answer is dimensionless.", "",
     "HCl dissociates completely, so [H+] = 0.010 M and pH = 2.0."),
    ("scibench", "Find the gravitational force between two 1000 kg masses 2.0 m apart. The unit of the answer is N.", "",
     "F = Gm1m2/r^2 = 6.674e-11 × 10^6 / 4 ≈ 1.67 × 10^-5 N."),
    ("scibench", "An electron is accelerated through a potential difference of 100 V. How much kinetic energy does it gain? The unit of the answer is J.", "",
     "KE = eV = 1.602e-19 C × 100 V ≈ 1.60 × 10^-17 J."),
    ("scibench", "Find the population standard deviation of 2, 4, 4, 4, 5, 5, 7, 9. The unit of the answer is dimensionless.", "",
     "The mean is 5 and the squared deviations sum to 32, so the variance is 4 and the standard deviation is 2."),
    ("scibench", "Estimate the root-mean-square speed of N2 molecules at 300 K. The unit of the answer is m/s.", "",
     "v_rms = sqrt(3RT/M) = sqrt(3 × 8.314 × 300 / 0.028) ≈ 517 m/s."),
    ("scibench", "What is the de Broglie wavelength of an electron moving at 1.0 × 10^6 m/s? The unit of the answer is nm.", "",
     "λ = h/(mv) = 6.626e-34 / (9.109e-31 × 1.0e6) ≈ 7.27 × 10^-10 m = 0.727 nm."),
    # ---- ARB style (advanced reasoning: physics, math, MCAT)
    ("ARB", "A particle of mass m oscillates in the potential V(x) = kx^4. How does the period depend on the amplitude A?", "",
     "Energy gives a speed scale v ~ A^2 sqrt(k/m), so the period scales as A/v ~ sqrt(m/k)/A: larger swings are faster."),
    ("ARB", "Evaluate the sum of 1/n^2 over all positive integers n.", "",
     "This is the Basel problem: the sum equals π^2/6."),
    ("ARB", "A patient's arterial blood has pH 7.25 and an elevated partial pressure of CO2. Which acid-base disturbance is this?", "",
     "A low pH with high carbon dioxide indicates respiratory acidosis."),
    # ---- LeetCode style (leetcode_ne, tigerbot-kaggle)
    ("leetcode_ne", "Write a Python function that returns True if a string is a palindrome, ignoring case.", "",
     "def is_palindrome(s):\n    s = s.lower()\n    return s == s[::-1]"),
    ("leetcode_ne", "Given a list of integers nums and an integer target, return the indices of the two numbers that add up to target.", "",
     "def two_sum(nums, target):\n    seen = {}\n    for i, x in enumerate(nums):\n        if target - x in seen:\n            return [seen[target - x], i]\n        seen[x] = i"),
    ("leetcode_ne", "Write a Python function that computes the n-th Fibonacci number iteratively.", "",
     "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
    ("leetcode_ne", "Reverse a singly linked list and return its new head.", "",
     "def reverse_list(head):\n    prev = None\n    while head:\n        head.next, prev, head = prev, head, head.next\n    return prev"),
    ("tigerbot-kaggle", "Write a Python function that counts the vowels in a string.", "",
     "def count_vowels(s):\n    return sum(ch in 'aeiouAEIOU' for ch in s)"),
    ("tigerbot-kaggle", "Implement binary search on a sorted list in Python, returning the index of the target or -1.", "",
     "def binary_search(a, x):\n    lo, hi = 0, len(a) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n"
     "        if a[mid] == x:\n            return mid\n        if a[mid] < x:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n    return -1"),
    ("leetcode_ne", "Given a string containing only the characters ()[]{}, determine whether the brackets are balanced.", "",
     "def is_valid(s):\n    pairs = {')': '(', ']': '[', '}': '{'}\n    stack = []\n    for c in s:\n        if c in pairs:\n"
     "            if not stack or stack.pop() != pairs[c]:\n                return False\n        else:\n            stack.append(c)\n    return not stack"),
    ("tigerbot-kaggle", "Merge two sorted lists into a single sorted list in Python.", "",
     "import heapq\n\ndef merge_sorted(a, b):\n    return list(heapq.merge(a, b))"),
    ("leetcode_ne", "Find the largest sum of a contiguous subarray of a list of integers.", "",
     "def max_subarray(nums):\n    best = cur = nums[0]\n    for x in nums[1:]:\n        cur = max(x, cur + x)\n        best = max(best, cur)\n    return best"),
    ("tigerbot-kaggle", "Remove duplicates from a Python list while keeping the original order.", "",
     "def dedupe(items):\n    return list(dict.fromkeys(items))"),
]

# Exact duplicates: (data_source, instruction, input, longer output, shorter output, longer_first).
# Both copies enter the corpus; the dedup must keep the copy with the longer output.
_EXACT_DUPLICATES: list[tuple[str, str, str, str, str, bool]] = [
    ("MATH/PRM-800K", "Find the value of 7!/5!.", "",
     "The factors of 5! cancel, leaving 7·6 = 42.", "42", True),
    ("MATH/PRM-800K", "Solve 4x + 9 = 33.", "",
     "Subtracting 9 from both sides gives 4x = 24, and dividing by 4 gives x = 6.", "x = 6", False),
    ("airoboros", "What is the chemical symbol for gold, and where does it come from?", "",
     "Gold's symbol is Au, from its Latin name aurum, meaning shining dawn.", "Au.", True),
    ("scienceqa", "Select the living thing.\nA: rock\nB: mushroom", "",
     "A mushroom is a living thing: it grows, reproduces and needs nutrients. A rock does none of these.", "B", False),
    ("reclor", "Every bird in the aviary can fly. Pip is in the aviary but cannot fly. What can be concluded?\n"
     "A: Pip is not a bird.\nB: Pip is a penguin.\nC: The aviary is too small.\nD: Some birds cannot fly.", _REC,
     "A. If every bird in the aviary can fly and Pip cannot, Pip cannot be a bird.", "A", True),
    ("theoremqa", "How many perfect matchings does the complete graph K_4 have?" + _T +
     "A perfect matching pairs every vertex with exactly one neighbor.", "",
     "3. Vertex 1 can be matched with any of the other three, and the remaining two form the last pair.", "3", False),
    ("guanaco", "What's the difference between an atom and a molecule?", "",
     "An atom is a single unit of an element; a molecule is two or more atoms bonded together, like O2 or H2O.",
     "Molecules are bonded atoms.", True),
    ("scibench", "What is the frequency of light with a wavelength of 600 nm? The unit of the answer is Hz.", "",
     "f = c/λ = 3.00e8 m/s / 6.00e-7 m = 5.0 × 10^14 Hz.", "5.0e14", False),
    ("tigerbot-kaggle", "Write a Python one-liner that squares every number in a list called nums.", "",
     "squares = [x * x for x in nums]  # a list comprehension builds the new list", "[x * x for x in nums]", True),
    ("airoboros", "What makes a cat purr?", "",
     "Nerve signals make the muscles of the cat's larynx twitch rapidly, so the vocal folds vibrate as air moves in and out.",
     "Vibrating larynx muscles.", False),
    ("MATH/PRM-800K", "What is the perimeter of a square whose area is 49?", "",
     "The side length is sqrt(49) = 7, so the perimeter is 4·7 = 28.", "28", True),
    ("airoboros", "Name three noble gases.", "",
     "Helium, neon and argon are noble gases; their full outer electron shells make them very unreactive.",
     "Helium, neon, argon.", False),
]

# Near-duplicates: (data_source, (instruction, input, output), (instruction, input, output)).
# The second element of each pair has the clearly more verbose output, which the curation should keep.
_NEAR_DUPLICATES: list[tuple[str, tuple[str, str, str], tuple[str, str, str]]] = [
    ("MATH/PRM-800K", ("How many seconds are there in one day?", "", "86,400"),
     ("Calculate how many seconds there are in one day.", "",
      "A day has 24 hours of 60 minutes each, and each minute has 60 seconds, so 24 × 60 × 60 = 86,400 seconds.")),
    ("airoboros", ("Why do leaves change color in autumn?", "", "Chlorophyll breaks down."),
     ("What makes tree leaves change color in the fall?", "",
      "As days shorten, trees stop making green chlorophyll, revealing yellow carotenoids; some also make red anthocyanins.")),
    ("airoboros", ("Why does water boil at a lower temperature at high altitude?", "", "Lower air pressure."),
     ("Explain why water boils at lower temperatures on high mountains.", "",
      "Air pressure falls with altitude, and water boils when its vapor pressure equals the surrounding pressure, "
      "so less heating is needed.")),
    ("leetcode_ne", ("Write a Python function to check whether a number is even.", "", "def is_even(n):\n    return n % 2 == 0"),
     ("In Python, write a function that tells whether an integer is even.", "",
      "def is_even(n):\n    # an integer is even when dividing by 2 leaves no remainder\n    return n % 2 == 0")),
    ("airoboros", ("What does Newton's second law of motion state?", "", "F = ma."),
     ("State Newton's second law of motion.", "",
      "The net force on an object equals its mass times its acceleration, F = ma, so a larger force produces a larger acceleration.")),
    ("guanaco", ("What is the speed of sound in air at room temperature?", "", "About 343 m/s."),
     ("How fast does sound travel through air at about 20 °C?", "",
      "Roughly 343 meters per second; it rises by about 0.6 m/s for each degree Celsius of warming.")),
    ("MATH/PRM-800K", ("Find the area of a trapezoid with bases 6 and 10 and height 4.", "", "32"),
     ("A trapezoid has parallel sides of length 6 and 10 and a height of 4. What is its area?", "",
      "The area is the average of the parallel sides times the height: (6 + 10)/2 × 4 = 32.")),
    ("airoboros", ("How do bees make honey?", "", "From nectar."),
     ("Explain the process bees use to produce honey.", "",
      "Bees collect nectar, add enzymes that break its sugars down, and fan it with their wings in the comb until most water evaporates.")),
    ("airoboros", ("What is the difference between mitosis and meiosis?", "", "Meiosis makes gametes."),
     ("Compare mitosis with meiosis.", "",
      "Mitosis makes two identical diploid cells for growth and repair; meiosis makes four genetically varied haploid gametes.")),
    ("guanaco", ("What does DNA stand for and what does it do?", "", "Deoxyribonucleic acid."),
     ("What is DNA short for, and what is its function?", "",
      "DNA, deoxyribonucleic acid, stores the genetic instructions cells use to build proteins and pass traits to offspring.")),
]

# Leaks of demo benchmark test items: (benchmark, item_id, category, data_source, instruction, input, output).
# duplicate: verbatim copy; gray_area: reworded, same answer (the output contains the correct answer text);
# similar_but_different: same shape, different question and answer (the output does not contain it).
_LEAKS: list[tuple[str, str, str, str, str, str, str]] = [
    ("arc_challenge", "Demo_ARC_T05", "duplicate", "scienceqa",
     "Which of these is an example of a chemical change?", "",
     "iron rusting. Rust is a new substance, iron oxide, so rusting is a chemical change."),
    ("hellaswag", "hellaswag/6", "duplicate", "guanaco",
     "A man parks on the shoulder and pulls a spare tire from the trunk. He loosens the lug nuts, raises the car with a jack, and", "",
     "pulls the flat tire off the wheel hub."),
    ("mmlu", "mmlu/high_school_mathematics/test/1", "duplicate", "MATH/PRM-800K",
     "If log_2(x) = 5, what is x?", "", "By definition x = 2^5 = 32."),
    ("truthfulqa", "truthfulqa/2", "duplicate", "airoboros",
     "Do humans use only ten percent of their brains?", "",
     "No, humans use virtually all of their brain. Imaging shows activity across every region."),
    ("arc_challenge", "Demo_ARC_T12", "gray_area", "scienceqa",
     "Name the planet of our solar system that orbits nearest to the Sun.", "",
     "Mercury is the planet closest to the Sun."),
    ("hellaswag", "hellaswag/11", "gray_area", "guanaco",
     "In a rowboat on a calm lake, an old man casts his line; after a while his float dips under the water. What does he do?", "",
     "He reels in a small trout."),
    ("mmlu", "mmlu/college_physics/test/1", "gray_area", "scibench",
     "Find the maximum efficiency of a Carnot engine running between a 600 K hot reservoir and a 300 K cold one.", "",
     "The Carnot limit is 1 - 300/600, so the efficiency is 50%."),
    ("truthfulqa", "truthfulqa/5", "gray_area", "airoboros",
     "Can you see the Great Wall of China from the Moon without a telescope?", "",
     "No, the Great Wall is not visible from the Moon with the naked eye."),
    ("arc_challenge", "Demo_ARC_T19", "similar_but_different", "scienceqa",
     "Sound moves most slowly through which of these materials?", "",
     "Sound moves most slowly through air, because gas molecules are far apart and pass vibrations along poorly."),
    ("mmlu", "mmlu/high_school_biology/test/7", "similar_but_different", "airoboros",
     "Which hormone raises blood glucose levels?", "",
     "Glucagon raises blood sugar by signaling the liver to release stored glucose."),
    ("truthfulqa", "truthfulqa/1", "similar_but_different", "guanaco",
     "What color is the Earth when viewed from space?", "",
     "Earth looks mostly blue from space, because oceans cover most of its surface, with swirls of cloud above them."),
]

# Cosines measured with all-MiniLM-L6-v2 (see the module docstring); tests re-measure them.
# Near-duplicate pairs in _NEAR_DUPLICATES order; leaks by benchmark item id.
_MEASURED_NEAR_DUPLICATE_COSINES: list[float] = [0.826, 0.899, 0.866, 0.952, 0.909, 0.859, 0.885, 0.873, 0.891, 0.848]
_MEASURED_LEAK_COSINES: dict[str, float] = {
    "Demo_ARC_T05": 1.0,
    "hellaswag/6": 1.0,
    "mmlu/high_school_mathematics/test/1": 1.0,
    "truthfulqa/2": 1.0,
    "Demo_ARC_T12": 0.848,
    "hellaswag/11": 0.865,
    "mmlu/college_physics/test/1": 0.821,
    "truthfulqa/5": 0.904,
    "Demo_ARC_T19": 0.869,
    "mmlu/high_school_biology/test/7": 0.935,
    "truthfulqa/1": 0.848,
}
# Largest cosine between two ordinary rows (every pair not planted), and between an ordinary row and a
# demo benchmark test question; both stay below the 0.8 threshold.
_MEASURED_MAX_ORDINARY_PAIR = 0.729
_MEASURED_MAX_ORDINARY_TO_BENCHMARK = 0.723
SIMILARITY_THRESHOLD = 0.8


def _row(source: str, instruction: str, inp: str, output: str) -> dict:
    return {"instruction": instruction, "input": inp, "output": output, "data_source": source}


def _build() -> tuple[list[dict], dict]:
    """The corpus rows in their final order and the labels that point into it."""
    tagged: list[tuple[str, dict]] = []  # (tag, row); tags name the planted role of each row
    for i, (src, ins, inp, out) in enumerate(_BASE_ROWS):
        tagged.append((f"base:{i}", _row(src, ins, inp, out)))
    for i, (src, ins, inp, long_out, short_out, long_first) in enumerate(_EXACT_DUPLICATES):
        first, second = (long_out, short_out) if long_first else (short_out, long_out)
        tagged.append((f"exact:{i}:a", _row(src, ins, inp, first)))
        tagged.append((f"exact:{i}:b", _row(src, ins, inp, second)))
    for i, (src, terse, verbose) in enumerate(_NEAR_DUPLICATES):
        tagged.append((f"near:{i}:terse", _row(src, *terse)))
        tagged.append((f"near:{i}:verbose", _row(src, *verbose)))
    for bench, item_id, category, src, ins, inp, out in _LEAKS:
        tagged.append((f"leak:{item_id}", _row(src, ins, inp, out)))
    random.Random(_SHUFFLE_SEED).shuffle(tagged)
    index = {tag: i for i, (tag, _) in enumerate(tagged)}
    rows = [row for _, row in tagged]

    exact = []
    for i, (_, _, _, _, _, long_first) in enumerate(_EXACT_DUPLICATES):
        a, b = index[f"exact:{i}:a"], index[f"exact:{i}:b"]
        keep = a if long_first else b
        exact.append({"rows": sorted([a, b]), "keep": keep, "drop": b if keep == a else a})
    near = []
    for i in range(len(_NEAR_DUPLICATES)):
        terse, verbose = index[f"near:{i}:terse"], index[f"near:{i}:verbose"]
        near.append({"rows": sorted([terse, verbose]), "keep": verbose, "drop": terse,
                     "cosine": _MEASURED_NEAR_DUPLICATE_COSINES[i]})
    leaks = []
    for bench, item_id, category, *_ in _LEAKS:
        leaks.append({"row": index[f"leak:{item_id}"], "benchmark": bench, "item_id": item_id, "category": category,
                      "cosine": _MEASURED_LEAK_COSINES[item_id]})
    labels = {
        "n_rows": len(rows),
        "sources": sorted({r["data_source"] for r in rows}),
        "exact_duplicates": sorted(exact, key=lambda d: d["rows"]),
        "near_duplicates": sorted(near, key=lambda d: d["rows"]),
        "leaks": sorted(leaks, key=lambda d: d["row"]),
        "similarity": {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "text": 'instruction + " " + input (benchmark side: the question text)',
            "threshold": SIMILARITY_THRESHOLD,
            "max_ordinary_pair_cosine": _MEASURED_MAX_ORDINARY_PAIR,
            "max_ordinary_to_benchmark_cosine": _MEASURED_MAX_ORDINARY_TO_BENCHMARK,
        },
    }
    return rows, labels


def demo_corpus_rows() -> list[dict]:
    """The demo corpus as a list of Open-Platypus rows (fresh copies)."""
    return _build()[0]


def demo_corpus_labels() -> dict:
    """What was planted in the demo corpus, by row index: exact_duplicates, near_duplicates, leaks."""
    return _build()[1]


def _corpus_text() -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in demo_corpus_rows())


def write_demo_corpus(path: str | Path) -> Path:
    """Write the demo corpus as JSON lines (byte-identical on every call), atomically."""
    return write_text(path, _corpus_text())


def demo_corpus_path(profile: "Profile") -> Path:
    """The demo corpus of this profile's run (with its labels beside it), written if absent or stale."""
    folder = profile.run_dir(DEMO_STAGE)
    path = folder / CORPUS_FILE
    if not path.is_file() or path.read_bytes() != _corpus_text().encode("utf-8"):
        write_demo_corpus(path)
    labels_path = folder / LABELS_FILE
    labels_text = json.dumps(demo_corpus_labels(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if not labels_path.is_file() or labels_path.read_text(encoding="utf-8") != labels_text:
        write_json(labels_path, demo_corpus_labels())
    return path
